"""Hostile files, generated (issue 19): model files, OpenCLIP configs, plan configs and hardware
files are made from valid ones (the schemas' own dumps) with one mutation each: a wrong type, a
bool for a count, a huge or non-finite number, an unknown key (a typo of a known one, or noise),
a missing key, or deep nesting; written as YAML, JSON or TOML.

Whatever the file, the planner answers in one of two ways: exit 0 with strict, finite JSON, or
exit 2 with exactly one ``error:`` line. Never a traceback (``run_cli`` lets it through, failing
the test), never ``NaN`` / ``Infinity`` in the JSON. Few examples each: the CLI runs in process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hostile import assert_one_line, dump, run_cli, tiny_model, tiny_openclip

FEW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = ["--devices", "8", "--global-batch", "64"]

BAD_VALUES = st.sampled_from(
    [
        True,
        False,
        None,
        0,
        -1,
        0.5,
        2**31,
        2**62,
        2**63,
        2**80,
        float("inf"),
        float("-inf"),
        float("nan"),
        1e308,
        -1e308,
        1e-300,
        "x",
        "",
        [],
        {},
        [1, 2],
    ]
)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in ``node`` (mappings and lists), containers included."""
    out = [prefix] if prefix else []
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, value in items:
        out += _paths(value, (*prefix, key))
    return out


def _get(node: Any, path: tuple) -> Any:
    for key in path:
        node = node[key]
    return node


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


class Mutated(dict):
    """A mutated document that says, when hypothesis prints it, what was changed where (the
    document itself can be too deep to print)."""

    what = ""

    def __repr__(self) -> str:
        return f"<{self.what}>"


@st.composite
def mutated(draw, base: dict) -> Mutated:
    """``base`` with one mutation at a random place."""
    doc = json.loads(json.dumps(base))
    paths = _paths(doc)
    path = draw(st.sampled_from(paths))
    parent, key = _get(doc, path[:-1]), path[-1]
    kind = draw(st.sampled_from(["value", "value", "value", "typo", "noise", "delete", "deep"]))
    event(kind)
    if kind == "value":
        parent[key] = draw(BAD_VALUES)
    elif kind == "deep":
        parent[key] = _deep(draw(st.sampled_from([65, 150])))  # 100,000: test_hostile_inputs
    elif kind == "delete" and isinstance(parent, dict):
        del parent[key]
    elif isinstance(parent, dict):
        name = str(key)
        if kind == "typo" and len(name) > 2:
            i = draw(st.integers(0, len(name) - 1))
            name = name[:i] + name[i + 1 :]
        else:
            name = draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
        if name not in parent:
            parent[name] = draw(st.one_of(BAD_VALUES, st.integers(1, 100)))
        key = name
    out = Mutated(doc)
    value = repr(parent.get(key) if isinstance(parent, dict) else parent[key])
    out.what = f"{kind} at {'.'.join(map(str, path[:-1]))}.{key}: {value[:60]}"
    return out


def _check(args: list[str]) -> None:
    result = run_cli(*args)
    event(f"exit {result.rc}")
    if result.rc == 0:
        assert "Infinity" not in result.out and "NaN" not in result.out, result.out[-2000:]
        json.loads(result.out, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
    else:
        assert_one_line(result)


def _write(doc: dict, suffix: str, folder: str, stem: str) -> str:
    path = Path(folder) / f"{stem}{suffix}"
    path.write_text(dump(dict(doc), suffix), encoding="utf-8")
    return str(path)


def _lab_device() -> dict:
    """The catalog's H100 written out in full (every field a mutation can reach)."""
    from vlscale.plan.compute_model import default_profile
    from vlscale.specs.catalog import get_device

    h100 = get_device("H100")
    device = h100.model_dump(mode="json", exclude_none=True)
    compute = default_profile(h100).model_dump(mode="json", exclude_none=True)
    return device | {"name": "h100-lab", "aliases": [], "compute": compute}


PLAN = {
    "model": "tiny-clip",
    "devices": 8,
    "global_batch": 64,
    "samples": 1_000_000,
    "image_size": 32,
    "price_per_device_hour": 2.0,
    "decode_samples_per_s_per_device": 1000.0,
    "sim_steps": 1,
    "seed": 1,
    "failures": {"mtbf_device_h": 50_000.0, "restart_s": 600.0},
}


@FEW
@given(doc=mutated(tiny_model()), suffix=st.sampled_from([".yaml", ".json"]))
def test_a_mutated_model_file_plans_or_is_one_line(doc, suffix):
    with tempfile.TemporaryDirectory() as d:
        _check(["plan", "--model", _write(doc, suffix, d, "m"), *SMALL, "--json"])


@FEW
@given(doc=mutated(tiny_openclip()))
def test_a_mutated_openclip_config_is_counted_or_is_one_line(doc):
    with tempfile.TemporaryDirectory() as d:
        _check(["params", _write(doc, ".json", d, "oc"), "--json"])


@FEW
@given(doc=mutated(PLAN), suffix=st.sampled_from([".yaml", ".json", ".toml"]))
def test_a_mutated_plan_config_plans_or_is_one_line(doc, suffix):
    with tempfile.TemporaryDirectory() as d:
        _check(["plan", "--config", _write(doc, suffix, d, "c"), "--json"])


@FEW
@given(doc=mutated({"devices": [_lab_device()]}), suffix=st.sampled_from([".yaml", ".toml"]))
def test_a_mutated_hardware_file_plans_or_is_one_line(doc, suffix):
    with tempfile.TemporaryDirectory() as d:
        hw = _write(doc, suffix, d, "hw")
        _check(["plan", "--model", "tiny-clip", *SMALL, "--device", "h100-lab",
                "--hardware-file", hw, "--json"])  # fmt: skip
        _check(["hardware", "--hardware-file", hw, "--json"])
