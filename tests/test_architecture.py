"""The package's architecture, checked with import-linter (grimp builds the import graph).

The contracts live in pyproject.toml ([tool.importlinter]): stages import only downward, the
data layer needs no ML or web library, the model layer no web framework. Modules stay small
enough to read (one job each).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hdb_mlops"
MAX_MODULE_LINES = 450


def test_import_linter_contracts_are_kept():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "broken" not in out.stdout.split("Contracts:")[-1].lower().replace("0 broken", "")


def test_every_stage_folder_is_a_package_with_a_contract():
    """A new stage folder must be placed in the layers contract, or nothing checks it."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {
        name.strip()
        for contract in config["contracts"]
        if contract["type"] == "layers"
        for layer in contract["layers"]
        for name in layer.split("|")
    }
    stages = {f"hdb_mlops.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert stages - layered == set(), "add these folders to the layers contract in pyproject.toml"


def test_modules_have_one_job_and_stay_readable():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"modules over {MAX_MODULE_LINES} lines: split them by job"


def test_public_functions_have_docstrings():
    missing = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            is_def = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            if is_def and not node.name.startswith("_") and ast.get_docstring(node) is None:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert missing == []
