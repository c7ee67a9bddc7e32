"""SageMaker's container contract, as the entry scripts read it.

A training job (a "bring your own container" image) finds:

- its channels in ``/opt/ml/input/data/<channel>`` (``$SM_CHANNEL_<NAME>`` in SageMaker's
  framework containers, which set the ``SM_*`` variables; honoured when set);
- its hyperparameters in ``/opt/ml/input/config/hyperparameters.json``, every value a
  string (``$SM_HPS``, JSON, when set; ``$SM_INPUT_CONFIG_DIR`` moves the folder);
- ``/opt/ml/model`` (``$SM_MODEL_DIR``) for the model, which SageMaker tars into
  ``model.tar.gz``; ``/opt/ml/output`` (``$SM_OUTPUT_DIR``), where a ``failure`` file
  explains a failed job.

A processing job gets the ``LocalPath`` folders of its inputs and outputs, by convention under
``/opt/ml/processing`` (the scripts take ``--base-dir`` to move that root). Between steps the
tables travel as parquet (types kept: ``month`` stays a monthly period).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

#: The root of every path of the contract inside a SageMaker container.
OPT_ML = Path("/opt/ml")
#: The processing jobs' root.
PROCESSING_DIR = OPT_ML / "processing"
#: The channels of the training job.
CHANNELS = ("train", "validation")
#: A column that keeps each row's position in the prepared table, so that the training
#: script puts train + validation back in the original order (row order reaches the trees).
ROW_ID = "row_id"
#: The split description Prepare writes next to every table.
SPLIT_FILE = "split.json"
#: The evaluation report Evaluate writes (the pipeline's PropertyFile reads it).
EVALUATION_FILE = "evaluation.json"
#: The data file name of a table folder.
TABLE_FILE = "part-0.parquet"


@dataclass(frozen=True)
class TrainingPaths:
    """The folders of a training job, from the ``SM_*`` variables or their defaults."""

    model_dir: Path
    input_config_dir: Path
    output_dir: Path
    output_data_dir: Path

    def channel(self, name: str) -> Path:
        """The folder of the input channel ``name``."""
        env = os.environ.get(f"SM_CHANNEL_{name.upper()}")
        return Path(env) if env else OPT_ML / "input" / "data" / name

    @property
    def failure_file(self) -> Path:
        """Where a failed job explains itself (SageMaker shows it as the FailureReason)."""
        return self.output_dir / "failure"


def training_paths() -> TrainingPaths:
    """The training job's folders (``$SM_MODEL_DIR`` etc., else the /opt/ml defaults)."""

    def env_path(name: str, default: Path) -> Path:
        return Path(os.environ[name]) if os.environ.get(name) else default

    output_dir = env_path("SM_OUTPUT_DIR", OPT_ML / "output")
    return TrainingPaths(
        model_dir=env_path("SM_MODEL_DIR", OPT_ML / "model"),
        input_config_dir=env_path("SM_INPUT_CONFIG_DIR", OPT_ML / "input" / "config"),
        output_dir=output_dir,
        output_data_dir=env_path("SM_OUTPUT_DATA_DIR", output_dir / "data"),
    )


def decode_value(text: Any) -> Any:
    """A hyperparameter as a value: SageMaker passes strings (``"600"``, ``"0.1"``,
    ``"true"``); JSON-decode them when they are JSON, else keep the text."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def hyperparameters(paths: TrainingPaths) -> dict[str, Any]:
    """The job's hyperparameters, decoded (``$SM_HPS`` first, else hyperparameters.json)."""
    raw: Any
    if os.environ.get("SM_HPS"):
        raw = json.loads(os.environ["SM_HPS"])
    else:
        path = paths.input_config_dir / "hyperparameters.json"
        raw = json.loads(path.read_text()) if path.is_file() else {}
    if not isinstance(raw, dict):
        raise ValueError("hyperparameters must be a JSON object")
    return {str(key): decode_value(value) for key, value in raw.items()}


def write_table(frame: pd.DataFrame, folder: Path | str) -> Path:
    """Write ``frame`` as the one parquet file of the table folder ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TABLE_FILE
    frame.to_parquet(path, index=False)
    return path


def read_table(folder: Path | str) -> pd.DataFrame:
    """Every parquet file of a table folder (a channel, a processing input), in name order."""
    folder = Path(folder)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no parquet file (is the channel empty?)")
    frames = [pd.read_parquet(path) for path in files]
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def read_json(path: Path | str) -> dict[str, Any]:
    """A JSON object from a file."""
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def write_json(path: Path | str, value: dict[str, Any]) -> Path:
    """Write ``value`` as indented JSON (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    return path


def run_entry(main: Callable[[list[str] | None], int], failure_file: Path | None = None) -> None:
    """Run an entry script's ``main`` as a container would: exit with its status; on an
    exception print one ``error:`` line (the traceback with ``$HDB_MLOPS_TRACEBACK=1``),
    write it to ``failure_file`` when given, and exit 1."""
    try:
        status = main(None)
    except Exception as exc:  # a container reports every failure the same way
        message = f"{type(exc).__name__}: {exc}"
        if os.environ.get("HDB_MLOPS_TRACEBACK"):
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        if failure_file is not None:
            failure_file.parent.mkdir(parents=True, exist_ok=True)
            failure_file.write_text(message + "\n")
        sys.exit(1)
    sys.exit(status)
