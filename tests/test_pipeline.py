"""The papermill pipeline through its CLI: order, parameters, manifest, failures, timeouts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from hdb_mlops.course import pipeline

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def run_pipeline(notebooks: Path, runs: Path, *args: str) -> subprocess.CompletedProcess:
    """``hdb-mlops pipeline run`` over ``notebooks`` into ``runs``."""
    return cli("pipeline", "run", "--notebooks-dir", str(notebooks), "--runs-dir", str(runs), *args)


def write_notebook(path: Path, *sources: str, params: str = "run_dir = '.'\nrows = None") -> Path:
    cells = [new_code_cell(params, metadata={"tags": ["parameters"]})]
    cells += [new_code_cell(s) for s in sources]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


#: The notebooks that do not take the profile's data source, and why (their parameters
#: section says so too).
DATA_FREE = {
    "04_stage2_on_aws": "no resale data: the AWS infrastructure",
    "06b_drift_and_retraining": "always the bundled sample: the loop is the subject",
    "07_maturity_framework": "no resale data: it scans the repository",
}


def test_every_committed_notebook_has_one_parameters_cell():
    notebooks = pipeline.list_notebooks()
    assert notebooks, "no chapter notebooks"
    assert set(DATA_FREE) <= {p.stem for p in notebooks}
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} has {len(tagged)} cells tagged 'parameters'"
        declared = pipeline.declared_parameters(path)
        # every notebook writes below the pipeline's run folder
        assert "run_dir" in declared, f"{path.name} lacks parameter run_dir"
        if path.stem not in DATA_FREE:
            # the profile's data (sample or the real files) reaches it: `--profile full` works
            missing = {"data_source", "seed"} - declared
            assert not missing, f"{path.name} lacks parameters {sorted(missing)}"


@pytest.mark.slow
def test_quick_pipeline_runs_every_notebook_and_writes_the_manifest(tmp_path):
    out = cli(
        "pipeline", "run", "--profile", "quick", "--runs-dir", str(tmp_path), "--run-id", "ci"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "ci"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    expected = [p.stem for p in pipeline.list_notebooks()]
    assert [s["notebook"] for s in manifest["notebooks"]] == expected
    assert all(s["status"] == "ok" for s in manifest["notebooks"])
    assert manifest["status"] == "ok"
    assert manifest["parameters"]["data_source"] == "sample"
    assert len(manifest["data_hash"]) == 64
    assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40
    for step in manifest["notebooks"]:
        assert (run_dir / step["output"]).exists()
        assert step["seconds"] > 0
    data = manifest["notebooks"][[s["notebook"] for s in manifest["notebooks"]].index("05a_data")]
    figures = data["figures"]
    assert figures["rows_in"] == figures["rows_kept"] + figures["rows_quarantined"] == 30_000


def test_parameters_reach_the_notebook(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(
        nbdir / "01_echo.ipynb",
        "from hdb_mlops.course import keyfigures\n"
        "keyfigures.record(run_dir, '01_echo', rows=rows, label=label)",
        params="run_dir = '.'\nrows = None\nlabel = ''",
    )
    out = run_pipeline(
        nbdir,
        tmp_path / "runs",
        "--run-id",
        "p",
        "-p",
        "rows=500",
        "-p",
        "label=hello world",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    manifest = json.loads((tmp_path / "runs" / "p" / "manifest.json").read_text())
    assert manifest["notebooks"][0]["figures"] == {"rows": 500, "label": "hello world"}
    assert manifest["parameters"]["rows"] == 500

    typo = run_pipeline(
        nbdir,
        tmp_path / "runs",
        "-p",
        "rosw=5",
    )
    assert typo.returncode == 1
    assert "no notebook has a parameter named rosw" in typo.stderr


def test_failure_names_notebook_and_cell_keeps_output_and_exits_nonzero(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(nbdir / "01_ok.ipynb", "x = 1")
    write_notebook(nbdir / "02_broken.ipynb", "y = 2", "raise ValueError('the data is not there')")
    write_notebook(nbdir / "03_after.ipynb", "z = 3")
    out = run_pipeline(
        nbdir,
        tmp_path / "runs",
        "--run-id",
        "f",
    )
    assert out.returncode == 1
    assert (
        "notebook 02_broken failed at cell 2 (In [4]): ValueError: the data is not there"
        in out.stderr
    )
    assert "Traceback" not in out.stderr
    run_dir = tmp_path / "runs" / "f"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["status"] for s in manifest["notebooks"]] == ["ok", "failed", "skipped"]
    assert manifest["status"] == "failed"
    assert (run_dir / "notebooks" / "02_broken.ipynb").exists()


def test_cell_timeout_stops_a_hanging_notebook(tmp_path):
    nbdir = tmp_path / "nbs"
    nbdir.mkdir()
    write_notebook(nbdir / "01_hang.ipynb", "import time\ntime.sleep(60)")
    out = run_pipeline(
        nbdir,
        tmp_path / "runs",
        "--run-id",
        "t",
        "--cell-timeout",
        "3",
    )
    assert out.returncode == 1
    assert "01_hang failed at cell 1" in out.stderr
    assert "timed out" in out.stderr.lower() or "timeout" in out.stderr.lower()


def test_selection_and_parameter_parsing(tmp_path):
    names = [tmp_path / f"{n}.ipynb" for n in ("01_a", "03_c", "05a_d", "05b_e")]
    assert [p.stem for p in pipeline.select(names, only=["05"])] == ["05a_d", "05b_e"]
    assert [p.stem for p in pipeline.select(names, start="03")] == ["03_c", "05a_d", "05b_e"]
    with pytest.raises(pipeline.PipelineError, match="no notebook matches 09"):
        pipeline.select(names, only=["09"])
    assert pipeline.parse_parameter("rows=5000") == ("rows", 5000)
    assert pipeline.parse_parameter("rows=null") == ("rows", None)
    assert pipeline.parse_parameter("data_source=../data/raw") == ("data_source", "../data/raw")
    with pytest.raises(pipeline.PipelineError, match="not name=value"):
        pipeline.parse_parameter("rows")


def test_unknown_profile_is_a_clear_error(tmp_path):
    out = cli("pipeline", "run", "--profile", "huge", "--runs-dir", str(tmp_path))
    assert out.returncode == 2  # a usage error, caught before anything runs
    assert "unknown profile 'huge'" in out.stderr
