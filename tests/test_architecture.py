"""The layering holds: imports point down, and no module is in an import cycle.

The contracts live in setup.cfg (import-linter); these tests run them, and
show that they catch an import that points up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_import_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 kept, 0 broken" in result.stdout


def copy_tree(tmp_path: Path) -> None:
    for name in ("loyalty", "rules", "admin"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")


def test_an_import_from_the_domain_into_the_api_breaks_the_contract(tmp_path):
    copy_tree(tmp_path)
    service = tmp_path / "loyalty" / "accrual" / "service.py"
    service.write_text(service.read_text() + "\nfrom loyalty.api.base import runtime  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "Entry points on the domain, the domain on the ground BROKEN" in result.stdout
    assert "loyalty.accrual.service -> loyalty.api.base" in result.stdout


def test_an_import_of_the_admin_ui_from_the_service_breaks_the_contract(tmp_path):
    copy_tree(tmp_path)
    app = tmp_path / "loyalty" / "app.py"
    app.write_text(app.read_text() + "\nimport admin  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "The admin UI sits on the service; the service and the rules never import it BROKEN" in result.stdout
    assert "loyalty.app -> admin" in result.stdout


def test_the_admin_ui_calling_the_api_breaks_the_contract(tmp_path):
    copy_tree(tmp_path)
    view = tmp_path / "admin" / "views" / "members.py"
    view.write_text(view.read_text() + "\nfrom loyalty.api.base import runtime  # noqa: E402,F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "The admin UI calls the domain, not the other entry points BROKEN" in result.stdout


def test_no_module_is_in_an_import_cycle():
    graph = grimp.build_graph("loyalty", "rules", "admin")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {imported} -> ... -> {module}")
    assert cycles == []


def test_the_rules_engine_loads_neither_flask_nor_sqlalchemy():
    code = "import sys, rules; rules.default_programme(); print(sorted({'flask', 'sqlalchemy'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_the_domain_loads_without_the_web_layer():
    code = (
        "import sys, loyalty.jobs.runner, loyalty.members.jobs, loyalty.tiers.jobs, loyalty.fulfilment.jobs; "
        "print(sorted(m for m in ('flask', 'loyalty.api', 'loyalty.app') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
