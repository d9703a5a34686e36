"""`vlscale plan --json` is byte-identical to the recorded outputs (tests/golden/) on 20
configurations: the guard that lets the planner be restructured without moving a number.
Keys that new contracts add (`layout`) are set aside before comparing; nothing else is."""

from __future__ import annotations

import pytest

from tests.golden.configs import CONFIGS, HERE, plan_json, without_added_keys


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plan_json_unchanged(name: str) -> None:
    expected = (HERE / f"plan_{name}.json").read_text()
    assert without_added_keys(plan_json(CONFIGS[name])) == without_added_keys(expected)
