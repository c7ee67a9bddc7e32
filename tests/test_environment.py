"""The set-up files agree: one lock is the source of truth, environment.yml installs it, and
``import hdb_mlops`` stays light."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def lock_pins() -> dict[str, set[str]]:
    pins: dict[str, set[str]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line)
        if m:
            pins.setdefault(m.group(1).lower().split("[")[0], set()).add(m.group(2))
    return pins


def test_lock_pins_every_dependency_exactly():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(pyproject["dependencies"])
    for extra in pyproject["optional-dependencies"].values():
        wanted += extra
    pins = lock_pins()
    names = {re.split(r"[<>=!;\[ ]", req, maxsplit=1)[0].lower() for req in wanted}
    missing = sorted(n for n in names if n not in pins)
    assert not missing, f"in pyproject.toml but not pinned in requirements.lock: {missing}"
    text = (ROOT / "requirements.lock").read_text()
    assert "--python-version 3.11" in text


def test_environment_yml_installs_the_lock():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    assert pythons == ["python=3.11"], "environment.yml must pin the lock's Python (3.11)"
    pip_section = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-r requirements.lock" in pip_section
    pins = lock_pins()
    for entry in pip_section:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)$", entry)
        if m:  # any package pinned here must carry the lock's version
            name, version = m.group(1).lower(), m.group(2)
            assert version in pins.get(name, set()), f"{name}=={version} disagrees with the lock"


def test_installed_versions_match_the_lock():
    from importlib.metadata import PackageNotFoundError, version

    pins = lock_pins()
    checked = 0
    for name in (
        "pandas",
        "numpy",
        "scikit-learn",
        "papermill",
        "nbval",
        "fastapi",
        "sagemaker",
        "mlflow",
    ):
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        assert installed in pins[name], f"{name} {installed} installed, lock says {pins[name]}"
        checked += 1
    assert checked >= 6


def test_import_is_light():
    code = (
        "import sys, hdb_mlops, hdb_mlops.data.ingest, hdb_mlops.data.storage, hdb_mlops.course.pipeline;"
        "heavy = [m for m in ('sagemaker', 'mlflow', 'boto3', 'xgboost', 'papermill', 'fastapi')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_openmp_threads_wait_passively_unless_the_user_says_otherwise():
    # pipeline kernels and uvicorn workers inherit os.environ from the process that imported
    # hdb_mlops, so checking os.environ after the import covers them too
    code = (
        "import os, hdb_mlops, xgboost; from hdb_mlops.model.models import XGBoostModel;"
        "print(os.environ['OMP_WAIT_POLICY'])"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for given, expected in ((None, "PASSIVE"), ("ACTIVE", "ACTIVE")):
        run_env = env if given is None else {**env, "OMP_WAIT_POLICY": given}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=run_env
        )
        assert out.stdout.strip() == expected
