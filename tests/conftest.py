"""Shared fixtures: the real-data folder (skipped with a reason where absent) and offline guards."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# No test may reach AWS or the SageMaker SDK's telemetry: dummy credentials, a fixed region.
os.environ.setdefault("AWS_DEFAULT_REGION", "ap-southeast-1")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
# A service started by a test without --prediction-log logs its predictions here, not into the
# checkout's runs/monitor/.
os.environ.setdefault(
    "HDB_MLOPS_PREDICTION_LOG",
    str(Path(tempfile.mkdtemp(prefix="hdb-predlog-")) / "predictions.sqlite"),
)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The folder with the real data.gov.sg resale files; skips the test where there is none."""
    from hdb_mlops.config import REAL_DATA_ENV, real_data_dir

    path = real_data_dir()
    if path is None:
        pytest.skip(
            f"real HDB data not found: set {REAL_DATA_ENV} to a folder with the data.gov.sg "
            "resale files, or place them in ../shared/data/hdb"
        )
    return path
