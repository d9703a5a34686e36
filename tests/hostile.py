"""Helpers of the hostile-input tests (``tests/test_hostile_inputs.py``, the property tests):
run the CLI in this process and check the one-line contract.

The contract (issue 19, README's exit statuses): bad input is exactly one line ``error: ...`` on
stderr, exit status 2, and nothing written; good input is exit 0. A traceback is never an answer:
:func:`run_cli` lets any exception other than ``SystemExit`` through, so the test fails on it.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import yaml

# the sweep's size note ("sweep: 4 points; estimated ...") comes before its error line
NOTES = ("sweep: ", "note: ")


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """stderr's lines, without the notes that may precede an error."""
        return [ln for ln in self.err.splitlines() if ln.strip() and not ln.startswith(NOTES)]


def run_cli(*args: str) -> Result:
    """``vlscale ARGS`` in this process (``vlscale.cli.main``: usage errors included)."""
    from vlscale.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = 0
    env = {"COLUMNS": "200"}
    with (
        mock.patch.object(sys, "argv", ["vlscale", *args]),
        mock.patch.dict(os.environ, env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        try:
            main()
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Result(rc, out.getvalue(), err.getvalue())


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (hidden temp files included), sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_one_line(result: Result, *expect: str) -> str:
    """Exit 2 and one ``error:`` line on stderr holding every string of ``expect``."""
    assert result.rc == 2, (result.rc, result.err, result.out[-500:])
    lines = result.lines
    assert len(lines) == 1, result.err
    line = lines[0]
    assert line.startswith("error: "), line
    for text in expect:
        assert text in line, (text, line)
    assert "Traceback" not in result.err and "Infinity" not in result.out
    return line


def tiny_model() -> dict:
    """tiny-clip as a vlscale model file's mapping (what `vlscale models show --yaml` prints)."""
    from vlscale.specs.presets import get_model

    return get_model("tiny-clip").model_dump(mode="json")


def tiny_openclip() -> dict:
    """A small OpenCLIP model config (open_clip/model_configs/*.json format)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 2,
            "width": 64,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {"context_length": 16, "vocab_size": 260, "width": 64, "heads": 4, "layers": 2},
    }


def lab_device(**over) -> dict:
    """A hardware file's device entry based on the catalog's H100."""
    return {"base": "H100", "name": "h100-lab", **over}


def dump(data, suffix: str = ".yaml") -> str:
    """``data`` as the text of a file with ``suffix`` (YAML, JSON or TOML)."""
    import json

    if suffix == ".json":
        return json.dumps(data)
    if suffix == ".toml":
        return _toml(data)
    return yaml.safe_dump(data, sort_keys=False)


def _toml(data: dict, prefix: str = "") -> str:
    """A small TOML writer for the tests' mappings (scalars, lists, nested tables)."""
    import json

    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(v) if isinstance(v, str) else str(v)

    return "".join(f"{json.dumps(str(k))} = {value(v)}\n" for k, v in data.items())


def set_path(data: dict, path: str, value) -> dict:
    """``data`` with ``value`` at the dotted ``path`` (``vision.trunk.depth``)."""
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    return data
