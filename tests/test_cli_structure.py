"""How the CLI is put together: one package, commands registered in one place, no import cycles,
and the planner layer never imports the CLI.

``vlscale.cli.app`` holds the typer app and what commands share; the command modules define plain
functions and import neither the app object nor ``vlscale.cli``; ``vlscale.cli`` registers them
all in ``COMMANDS`` (one list). ``vlscale.plan`` (sweeps, config parsing) never pulls in typer.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlscale"
CLI = PACKAGE / "cli"
COMMAND_MODULES = ["models", "calibrate", "collectives", "plan", "report", "stacks", "tune"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def _decorators(path: Path) -> list[str]:
    return [
        ast.unparse(d)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef)
        for d in node.decorator_list
    ]


def test_no_cli_module_lives_at_the_package_root():
    assert sorted(p.name for p in PACKAGE.glob("cli*.py")) == []


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_modules_register_nothing_themselves(module):
    path = CLI / f"{module}.py"
    assert "vlscale.cli.app.app" not in _imports(path)
    assert not [d for d in _decorators(path) if d.startswith("app.")]
    assert "vlscale.cli" not in _imports(path)


def test_every_command_is_registered_once_in_the_one_list():
    from vlscale.cli import COMMANDS, app

    names = [name for name, _ in COMMANDS]
    assert len(names) == len(set(names))
    registered = [c.name for c in app.registered_commands]
    assert registered == names
    assert [g.name for g in app.registered_groups] == ["models", "stacks"]


def test_cli_app_imports_no_command_module():
    imported = _imports(CLI / "app.py")
    assert not {f"vlscale.cli.{m}" for m in COMMAND_MODULES} & imported


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_command_module_imports_alone(module):
    code = (
        f"import vlscale.cli.{module}\n"
        "import vlscale.cli\n"
        "assert vlscale.cli.app.registered_commands\n"
    )
    out = _fresh(code)
    assert out.returncode == 0, out.stderr


def test_sweep_and_plan_config_never_import_typer_or_the_cli():
    code = (
        "import sys\n"
        "import vlscale.plan.sweep, vlscale.plan.config, vlscale.plan.backends\n"
        "from vlscale.plan.config import parse_count\n"
        "assert parse_count('samples', '12.8e9') == 12_800_000_000\n"
        "bad = sorted(m for m in sys.modules if m == 'typer' or m.startswith('vlscale.cli'))\n"
        "assert not bad, bad\n"
    )
    out = _fresh(code)
    assert out.returncode == 0, out.stderr
