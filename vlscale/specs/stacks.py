"""Software stacks as named profiles (``vlscale/specs/data/stacks.yaml``; torch-free).

A stack is what runs the model: the attention kernel (``math`` saves the S×S scores, ``flash``
does not), the kernels that are fused, the loss default (``global``: OpenCLIP's full B×B logits on
every rank unless ``--local-loss``; ``local``: b×B), and one framework efficiency γ per device
kind, fitted on named published runs (``vlscale.plan.stack_fit``) with the leave-one-out spread
``sigma`` of those runs. The default stack is this project's own trainer; its γ is the closest
stack's (``vlscale.plan.compute_model.CALIBRATED``), marked assumed, so a plan without ``--stack``
is what it was before stacks existed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

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


@cache
def all_stacks() -> dict[str, StackProfile]:
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
        if kind in owner.sigma:
            return owner.sigma[kind], (
                f"leave-one-out spread of {n} published {kind} runs of stack {owner.name}"
            )
        return pooled, (
            f"{n} published {kind} run(s) of stack {owner.name}: too few for a spread; "
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
