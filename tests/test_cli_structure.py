"""How the CLI is put together: no import cycles, and the planner layer never imports the CLI.

``vlscale.cli_app`` holds the typer app; command modules import it (never ``vlscale.cli``) and
register their commands; ``vlscale.cli`` imports them all and is imported by nothing in the
package. ``vlscale.plan`` (sweeps, config parsing) never pulls in typer or a CLI module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlscale"
COMMAND_MODULES = ["cli_models", "cli_calibrate", "cli_collectives", "cli_plan", "cli_report"]


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_nothing_in_the_package_imports_the_entry_module():
    offenders = [
        p.name for p in PACKAGE.rglob("*.py") if p.name != "cli.py" and "vlscale.cli" in _imports(p)
    ]
    assert offenders == []


def test_cli_app_imports_no_command_module():
    imported = _imports(PACKAGE / "cli_app.py")
    assert not {f"vlscale.{m}" for m in COMMAND_MODULES} & imported


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_each_command_module_imports_alone_and_registers(module):
    code = (
        f"import vlscale.{module}\n"
        "from vlscale.cli_app import app\n"
        "names = [c.name for c in app.registered_commands]\n"
        "assert names and all(names), names\n"
        "import vlscale.cli\n"  # and the entry module after it, without a cycle
        "assert vlscale.cli.app is app\n"
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
