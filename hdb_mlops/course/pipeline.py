"""The tutorial pipeline: run the chapter notebooks in order with papermill.

Each run goes to ``runs/<run-id>/``: the executed notebooks, the data layers, the figures
each notebook recorded, and ``manifest.json`` (parameters, data hash, git commit, per-notebook
status and duration). A failing notebook stops the run, names the notebook and the cell, and
keeps the executed copy for inspection.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nbformat

from hdb_mlops import config
from hdb_mlops.course import keyfigures

log = logging.getLogger(__name__)

#: Parameters each profile passes to every notebook (a notebook ignores those it does not use).
PROFILES: dict[str, dict[str, Any]] = {
    # The bundled synthetic sample: runs anywhere, offline, in a few minutes.
    "quick": {
        "profile": "quick",
        "data_source": "sample",
        "rows": None,
        "seed": config.DEFAULT_SEED,
    },
    # The real data.gov.sg files (downloaded once into data/raw, or a folder given with
    # -p data_source=PATH).
    "full": {
        "profile": "full",
        "data_source": "download",
        "rows": None,
        "seed": config.DEFAULT_SEED,
    },
}
DEFAULT_CELL_TIMEOUT = 900
#: The full profile's cells run for minutes on the real data (the search and the rolling
#: evaluation of chapter 5B): a longer limit, still finite so that a hang does end.
CELL_TIMEOUTS: dict[str, int] = {"quick": DEFAULT_CELL_TIMEOUT, "full": 3 * 3600}


class PipelineError(RuntimeError):
    """A notebook failed; the message names it, the cell and where the executed copy is."""


@dataclass
class StepResult:
    """What happened to one notebook."""

    notebook: str
    status: str  # "ok" | "failed" | "skipped"
    seconds: float = 0.0
    output: str | None = None
    error: dict[str, Any] | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def list_notebooks(notebooks_dir: Path = config.NOTEBOOKS_DIR) -> list[Path]:
    """The chapter notebooks in pipeline order (by their numbered file names)."""
    return sorted(p for p in Path(notebooks_dir).glob("[0-9]*.ipynb"))


def select(
    notebooks: list[Path], only: list[str] | None = None, start: str | None = None
) -> list[Path]:
    """Notebooks to run: ``only`` those whose names start with one of the prefixes, or all
    ``start``-ing from the first whose name starts with that prefix."""
    names = [p.stem for p in notebooks]
    if only:
        chosen = [p for p in notebooks if any(p.stem.startswith(o) for o in only)]
        unknown = [o for o in only if not any(n.startswith(o) for n in names)]
        if unknown:
            raise PipelineError(
                f"no notebook matches {', '.join(unknown)}; notebooks: {', '.join(names)}"
            )
        return chosen
    if start:
        for i, name in enumerate(names):
            if name.startswith(start):
                return notebooks[i:]
        raise PipelineError(f"no notebook matches --from {start}; notebooks: {', '.join(names)}")
    return notebooks


def parse_parameter(text: str) -> tuple[str, Any]:
    """``name=value`` with the value read as JSON when it is valid JSON (numbers, null, true),
    else kept as a string: ``rows=5000`` -> 5000, ``data_source=../data`` -> "../data"."""
    if "=" not in text:
        raise PipelineError(f"parameter {text!r} is not name=value (e.g. -p rows=5000)")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name.isidentifier():
        raise PipelineError(f"parameter name {name!r} is not a valid Python name")
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def new_run_id(profile: str) -> str:
    """A sortable run id: ``20261127-093012-quick``."""
    return f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{profile}"


PAPERMILL_TAGS = {"injected-parameters", "papermill-error-cell-tag"}


def _failed_cell(output: Path) -> dict[str, Any]:
    """Index (as in the source notebook), source and error of the cell that failed."""
    try:
        nb = nbformat.read(output, as_version=4)
    except (OSError, ValueError):
        return {}
    # Papermill adds cells (injected parameters, error banners): count only the notebook's own.
    own = [c for c in nb.cells if not PAPERMILL_TAGS & set(c.get("metadata", {}).get("tags", []))]
    for index, cell in enumerate(own):
        marked = cell.get("metadata", {}).get("papermill", {}).get("exception")
        if marked or any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
            err = errors[0] if errors else {}
            return {
                "cell_index": index,
                "execution_count": cell.get("execution_count"),
                "cell_source": cell.source[:300],
                "ename": err.get("ename"),
                "evalue": err.get("evalue"),
            }
    return {}


def ensure_kernel() -> None:
    """Make the notebooks' ``python3`` kernel this environment's Python, whatever else is
    installed on the machine: register it in this environment and put that first on
    JUPYTER_PATH for the kernels papermill starts."""
    import sys

    share = Path(sys.prefix) / "share" / "jupyter"
    if not (share / "kernels" / "python3" / "kernel.json").exists():
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix, kernel_name="python3")
    paths = os.environ.get("JUPYTER_PATH", "")
    if not paths.startswith(str(share)):
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(share), paths) if p)


def _kernel_manager_class(stderr: Any = None):
    """A kernel manager that talks to the kernel over local IPC sockets, not TCP ports, and
    sends the kernel's own stderr (its log) to ``stderr`` when given."""
    import tempfile
    import uuid

    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            self.ip = str(Path(tempfile.gettempdir()) / f"hdb-mlops-kernel-{uuid.uuid4().hex[:12]}")

        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            if stderr is not None:
                kw["stderr"] = stderr
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return IPCKernelManager


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters``."""
    import papermill

    return set(papermill.inspect_notebook(str(notebook)))


def run_notebook(
    notebook: Path, output: Path, parameters: dict[str, Any], *, cell_timeout: int, run_dir: Path
) -> StepResult:
    """Execute one notebook with papermill; never raises for a notebook error."""
    import papermill

    ensure_kernel()
    declared = declared_parameters(notebook)
    parameters = {k: v for k, v in parameters.items() if k in declared}
    start = time.perf_counter()
    env_before = os.environ.get("HDB_MLOPS_RUN_DIR")
    os.environ["HDB_MLOPS_RUN_DIR"] = str(run_dir)
    kernel_log = run_dir / "logs" / f"{notebook.stem}.kernel.log"
    kernel_log.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(kernel_log, "wb")  # noqa: SIM115 - closed in finally
    try:
        papermill.execute_notebook(
            str(notebook),
            str(output),
            parameters=parameters,
            cwd=str(notebook.parent),
            execution_timeout=cell_timeout,
            progress_bar=False,
            log_output=False,
            kernel_name="python3",
            kernel_manager_class=_kernel_manager_class(log_file),
        )
    except Exception as exc:
        error = _failed_cell(output)
        if "Timeout" in type(exc).__name__:
            error["ename"] = type(exc).__name__
            error["evalue"] = f"the cell ran longer than the cell timeout of {cell_timeout} s"
        error.setdefault("ename", type(exc).__name__)
        error.setdefault("evalue", str(exc).strip().splitlines()[-1] if str(exc).strip() else "")
        error["kernel_log"] = str(kernel_log)
        return StepResult(notebook.stem, "failed", time.perf_counter() - start, str(output), error)
    finally:
        log_file.close()
        if env_before is None:
            os.environ.pop("HDB_MLOPS_RUN_DIR", None)
        else:
            os.environ["HDB_MLOPS_RUN_DIR"] = env_before
    return StepResult(notebook.stem, "ok", time.perf_counter() - start, str(output))


def run(
    profile: str = "quick",
    overrides: dict[str, Any] | None = None,
    *,
    only: list[str] | None = None,
    start: str | None = None,
    run_id: str | None = None,
    runs_dir: Path = config.RUNS_DIR,
    notebooks_dir: Path = config.NOTEBOOKS_DIR,
    cell_timeout: int | None = None,
) -> dict[str, Any]:
    """Run the chapter notebooks in order; returns the manifest (also written to the run dir).

    ``cell_timeout`` (seconds) defaults to the profile's (:data:`CELL_TIMEOUTS`).

    Raises :class:`PipelineError` after writing the manifest when a notebook fails.
    """
    if profile not in PROFILES:
        raise PipelineError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    notebooks = select(list_notebooks(notebooks_dir), only, start)
    if not notebooks:
        raise PipelineError(f"no chapter notebooks found in {notebooks_dir}")
    cell_timeout = cell_timeout or CELL_TIMEOUTS.get(profile, DEFAULT_CELL_TIMEOUT)
    run_id = run_id or new_run_id(profile)
    run_dir = (Path(runs_dir) / run_id).resolve()
    (run_dir / "notebooks").mkdir(parents=True, exist_ok=True)
    parameters = {**PROFILES[profile], **(overrides or {}), "run_dir": str(run_dir)}
    known = set().union(*(declared_parameters(nb) for nb in notebooks))
    unused = sorted(set(overrides or {}) - known)
    if unused:
        raise PipelineError(
            f"no notebook has a parameter named {', '.join(unused)}; "
            f"the parameters are {', '.join(sorted(known))}"
        )
    manifest: dict[str, Any] = {
        "run_id": run_id,
        "profile": profile,
        "parameters": parameters,
        "git": config.git_commit(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "cell_timeout_s": cell_timeout,
        "notebooks": [],
    }
    manifest_path = run_dir / "manifest.json"
    failure: StepResult | None = None
    total = time.perf_counter()
    for notebook in notebooks:
        if failure is not None:
            manifest["notebooks"].append({"notebook": notebook.stem, "status": "skipped"})
            continue
        log.info("running %s", notebook.name)
        output = run_dir / "notebooks" / notebook.name
        step = run_notebook(
            notebook, output, parameters, cell_timeout=cell_timeout, run_dir=run_dir
        )
        step.figures = keyfigures.collect(run_dir).get(notebook.stem, {})
        manifest["notebooks"].append(
            {
                "notebook": step.notebook,
                "status": step.status,
                "seconds": round(step.seconds, 2),
                "output": os.path.relpath(step.output, run_dir) if step.output else None,
                "error": step.error,
                "figures": step.figures,
            }
        )
        if step.status == "failed":
            failure = step
    data_manifest = run_dir / "data" / "manifest.json"
    manifest["data_hash"] = (
        json.loads(data_manifest.read_text()).get("data_hash") if data_manifest.exists() else None
    )
    manifest["seconds"] = round(time.perf_counter() - total, 2)
    manifest["status"] = "failed" if failure else "ok"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    if failure is not None:
        err = failure.error or {}
        count = err.get("execution_count")
        where = f"cell {err.get('cell_index', '?')}" + (f" (In [{count}])" if count else "")
        raise PipelineError(
            f"notebook {failure.notebook} failed at {where}: "
            f"{err.get('ename')}: {err.get('evalue')}\n"
            f"executed notebook kept at {failure.output}\nmanifest: {manifest_path}"
        )
    return manifest


def refresh_committed(
    notebooks_dir: Path = config.NOTEBOOKS_DIR,
    names: list[str] | None = None,
    cell_timeout: int = DEFAULT_CELL_TIMEOUT,
) -> list[Path]:
    """Re-execute the committed notebooks in place with their default parameters, then strip
    volatile metadata, so the outputs in git are exactly what nbval will reproduce."""
    import papermill

    notebooks = select(list_notebooks(notebooks_dir), names)
    ensure_kernel()
    for notebook in notebooks:
        log.info("refreshing %s", notebook.name)
        papermill.execute_notebook(
            str(notebook),
            str(notebook),
            cwd=str(notebook.parent),
            execution_timeout=cell_timeout,
            progress_bar=False,
            kernel_name="python3",
            kernel_manager_class=_kernel_manager_class(),
        )
        strip_volatile_metadata(notebook)
    return notebooks


def strip_volatile_metadata(path: Path) -> None:
    """Remove timestamps, durations and paths that papermill and Jupyter write into a notebook."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
