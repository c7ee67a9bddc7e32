"""`hdb-mlops train` and `hdb-mlops model ...` end to end on a real MLflow sqlite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args], capture_output=True, text=True, env=env
    )


@pytest.mark.slow
def test_train_register_gate_and_inspect(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "HDB_MLOPS_DATA_DIR": str(tmp_path / "data"),
    }
    common = ["--out", str(tmp_path / "models"), "--json"]
    first = cli("train", "--model", "median_ppsm", *common, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    first = json.loads(first.stdout)
    assert first["version"] == 1 and first["promoted"] is True
    assert first["cutoff"] == "2026-04"  # three months before the sample's last month

    second = cli("train", "--model", "linear", *common, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    second = json.loads(second.stdout)
    assert second["version"] == 2
    assert second["mape"] < first["mape"] - 0.1
    assert second["promoted"] is True, second["gate"]

    listing = cli("model", "list", "--json", env=env)
    assert listing.returncode == 0, listing.stderr[-2000:]
    versions = {row["version"]: row for row in json.loads(listing.stdout)}
    assert "champion" in versions[2]["aliases"]
    assert "champion" not in versions[1]["aliases"]

    again = cli("model", "promote", "1", env=env)
    assert again.returncode == 3  # the gate refuses the worse model
    assert "MAPE" in again.stdout
