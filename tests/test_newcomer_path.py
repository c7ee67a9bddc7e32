"""The README's path for a newcomer, in its order: after the pipeline, `hdb-mlops train`
registers a champion in the CLI's registry and `hdb-mlops serve` serves it.

The notebooks publish into sandbox stores of their own runs, so the CLI's registry starts
empty: the README must say which command makes a champion, and the error for a missing one
must name it. Both are checked here against real processes on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import requests

from hdb_mlops.data import examples
from hdb_mlops.serving import process

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env["HDB_MLOPS_DATA_DIR"] = str(tmp_path / "data")
    env.pop("HDB_MLOPS_MODEL", None)
    (tmp_path / "mlruns").mkdir()
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


def test_readme_makes_a_champion_before_serving_it():
    readme = (ROOT / "README.md").read_text()
    train = readme.index("hdb-mlops train ")
    serve = readme.index("hdb-mlops serve ")
    assert readme.index("make pipeline") < train < serve


def test_serve_without_a_champion_names_the_command_that_makes_one(tmp_path):
    out = _cli("serve", "--port", str(process.free_port()), env=_env(tmp_path), cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "hdb-mlops train" in lines[0]
    assert "no a version" not in lines[0]


def test_train_then_serve_the_champion(tmp_path):
    env = _env(tmp_path)
    trained = _cli("train", "--out", str(tmp_path / "models"), env=env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert re.search(r"^promoted\s+True$", trained.stdout, re.M), trained.stdout
    server = process.start_server("champion", log_path=tmp_path / "serve.log", env=env)
    try:
        ready = requests.get(f"{server.url}/ready", timeout=5).json()
        assert ready["ready"] is True and ready["model"]["version"] == "1"
        answer = requests.post(f"{server.url}/predict", json=examples.EXAMPLE_REQUEST, timeout=5)
        assert answer.status_code == 200
        assert 100_000 < answer.json()["price"] < 2_000_000
    finally:
        assert server.stop() in (0, -15)
