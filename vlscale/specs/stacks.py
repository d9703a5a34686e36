"""Software stacks as named profiles (``vlscale/specs/data/stacks.yaml``; torch-free).

A stack is what runs the model: the attention kernel (``math`` saves the S×S scores, ``flash``
does not), the kernels that are fused, the loss default (``global``: OpenCLIP's full B×B logits on
every rank unless ``--local-loss``; ``local``: b×B), and one framework efficiency γ per device
kind, fitted on named published runs (``vlscale.plan.stack_fit``) with the leave-one-out spread
``sigma`` of those runs. The default stack is this project's own trainer; its γ is the closest
stack's (``vlscale.plan.compute_model.CALIBRATED``), marked assumed, so a plan without ``--stack``
is what it was before stacks existed.

Measured γ: ``vlscale stacks fit`` solves a stack's γ for one device kind from this project's
trainer runs and writes a fragment (``vlscale.calibrate.stack_profile``); a fragment in
``MEASURED_DIR`` (``vlscale/specs/data/measured_stacks/*.yaml``, or the folder named by the
environment variable ``VLSCALE_MEASURED_STACKS``) replaces that (stack, device kind)'s γ, σ and
runs, marked measured in ``gamma_source``. Without fragments nothing changes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

import yaml

from vlscale.errors import ConfigError
from vlscale.specs.hardware import DATA_DIR


@dataclass(frozen=True)
class StackProfile:
    name: str
    description: str
    attention: str
    fused: tuple[str, ...]
    loss: str
    gamma_source: str
    gamma: dict[str, float] = field(default_factory=dict)
    sigma: dict[str, float] = field(default_factory=dict)
    fitted_on: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    spread_from: dict[str, str] = field(default_factory=dict)
    measured: dict[str, str] = field(default_factory=dict)  # device kind -> where γ was measured

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "attention": self.attention,
            "fused": list(self.fused),
            "loss": self.loss,
            "gamma": dict(self.gamma),
            "sigma": dict(self.sigma),
            "gamma_source": self.gamma_source,
            "fitted_on": {k: list(v) for k, v in self.fitted_on.items()},
            **self.notes,
        }


def device_kind(device_name: str) -> str:
    """The silicon a γ belongs to: 'A100-40GB' and 'A100-80GB' are both 'A100'."""
    return device_name.split("-")[0]


@cache
def _data() -> dict:
    return yaml.safe_load((DATA_DIR / "stacks.yaml").read_text())


def default_stack_name() -> str:
    return _data()["default"]


MEASURED_DIR = DATA_DIR / "measured_stacks"
MEASURED_ENV = "VLSCALE_MEASURED_STACKS"
FRAGMENT_KEYS = ("stack", "device_kind", "gamma", "sigma", "fitted_on", "source")


def measured_dir() -> Path:
    """The folder of measured fragments: ``$VLSCALE_MEASURED_STACKS`` or ``MEASURED_DIR``."""
    return Path(os.environ.get(MEASURED_ENV) or MEASURED_DIR)


def all_stacks() -> dict[str, StackProfile]:
    """Every stack of stacks.yaml, with the measured fragments of ``measured_dir()`` applied."""
    return _stacks_with(measured_dir())


@cache
def _stacks_with(folder: Path) -> dict[str, StackProfile]:
    stacks = _stored_stacks()
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
        fragment = load_fragment(path, stacks)
        stacks[fragment["stack"]] = apply_fragment(stacks[fragment["stack"]], fragment)
    return stacks


def load_fragment(path: str | Path, stacks: dict[str, StackProfile] | None = None) -> dict:
    """A measured fragment (``FRAGMENT_KEYS``), checked; a bad one is a ConfigError naming it."""
    from vlscale.config_files import read_mapping

    path = Path(path)
    data = read_mapping(path, "stack_file", "a fragment vlscale stacks fit wrote")
    missing = [k for k in FRAGMENT_KEYS if k not in data]
    if missing:
        raise ConfigError("stack_file", f"{path} lacks {missing}; write it with vlscale stacks fit")
    known = stacks if stacks is not None else _stored_stacks()
    if data["stack"] not in known:
        names = ", ".join(known)
        raise ConfigError("stack_file", f"{path}: unknown stack '{data['stack']}'; one of {names}")
    if not isinstance(data["device_kind"], str) or not data["device_kind"]:
        raise ConfigError("stack_file", f"{path}: device_kind must name a device kind; refit it")
    gamma, sigma = data["gamma"], data["sigma"]
    if not isinstance(gamma, int | float) or not 0 < gamma <= 1:
        raise ConfigError("stack_file", f"{path}: gamma {gamma!r} must be in (0, 1]; refit it")
    if sigma is not None and (not isinstance(sigma, int | float) or sigma < 0):
        raise ConfigError("stack_file", f"{path}: sigma {sigma!r} must be >= 0 or null; refit it")
    if not data["fitted_on"] or not isinstance(data["fitted_on"], list):
        raise ConfigError("stack_file", f"{path}: fitted_on must list the runs; refit it")
    return data


def apply_fragment(profile: StackProfile, fragment: dict) -> StackProfile:
    """``profile`` with the fragment's device kind measured (module docstring)."""
    kind = str(fragment["device_kind"])
    sigma = dict(profile.sigma)
    sigma.pop(kind, None)
    if fragment["sigma"] is not None:
        sigma[kind] = float(fragment["sigma"])
    source = f"{kind}: {fragment['source']}"
    return replace(
        profile,
        gamma=profile.gamma | {kind: float(fragment["gamma"])},
        sigma=sigma,
        fitted_on=profile.fitted_on | {kind: tuple(map(str, fragment["fitted_on"]))},
        measured=profile.measured | {kind: str(fragment["source"])},
        gamma_source=f"{source}; otherwise {profile.gamma_source}",
    )


def _stored_stacks() -> dict[str, StackProfile]:
    out = {}
    data = _data()["stacks"]
    for name, entry in data.items():
        # a variant (gamma_from) has no runs of its own: it takes another stack's fit
        gammas = data[entry["gamma_from"]].get("gamma") if "gamma_from" in entry else None
        gammas = gammas or entry.get("gamma") or {}
        out[name] = StackProfile(
            name=name,
            description=entry["description"],
            attention=entry["attention"],
            fused=tuple(entry.get("fused") or ()),
            loss=entry["loss"],
            gamma_source=entry["gamma_source"],
            gamma={k: float(v["gamma"]) for k, v in gammas.items()},
            sigma={k: float(v["sigma"]) for k, v in gammas.items() if v.get("sigma") is not None},
            fitted_on={k: tuple(v.get("fitted_on") or ()) for k, v in gammas.items()},
            notes={k: entry[k] for k in ("loss_note", "attention_note") if k in entry},
            spread_from=dict(entry.get("spread_from") or {}),
        )
    return out


def record_spreads() -> tuple[float, float]:
    """(pooled leave-one-out σ, spread of log γ over groups) stored from the record."""
    data = _data()
    return float(data["pooled_sigma"]), float(data["gamma_spread"])


def compute_sigma(stack: str | None, device_name: str) -> tuple[float, str]:
    """Lognormal σ of the compute factor for ``device_name`` under ``stack``, from the
    published record's leave-one-out residuals (``vlscale.plan.uncertainty``)."""
    import math

    profile = get_stack(stack)
    kind = device_kind(device_name)
    pooled, gamma_spread = record_spreads()
    owner = profile
    if kind not in profile.gamma and kind in profile.spread_from:
        owner = get_stack(profile.spread_from[kind])  # the stack whose γ the default borrows
    if kind in owner.gamma:
        n = len(owner.fitted_on.get(kind, ()))
        what = "trainer" if kind in owner.measured else "published"
        if kind in owner.sigma:
            return owner.sigma[kind], (
                f"leave-one-out spread of {n} {what} {kind} runs of stack {owner.name}"
            )
        return pooled, (
            f"{n} {what} {kind} run(s) of stack {owner.name}: too few for a spread; "
            "the record's pooled leave-one-out spread"
        )
    sigma = math.sqrt(pooled**2 + gamma_spread**2)
    return sigma, (
        f"γ borrowed ({profile.name} has no {kind} runs): the record's pooled leave-one-out "
        "spread and the spread of γ across its device / stack groups"
    )


def get_stack(name: str | None) -> StackProfile:
    """The named stack (None: the default); an unknown name is a ConfigError listing them."""
    stacks = all_stacks()
    name = name or default_stack_name()
    if name not in stacks:
        raise ConfigError("stack", f"unknown stack '{name}'; one of {', '.join(stacks)}")
    return stacks[name]
