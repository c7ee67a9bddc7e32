"""Every verb of ``hdb-mlops`` fails the same way: one ``error:`` line naming the argument or
the path, exit status 2, never a traceback; and it fails before any heavy work.

Each case runs the real command (``python -m hdb_mlops.cli``) in a temporary folder, with the
data layers, the MLflow store and the remote APIs (a closed local port) pointed away from the
repository and the internet.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hdb_mlops import cli, config
from hdb_mlops.cli import args as cli_args

CLOSED_PORT_URL = "http://127.0.0.1:9"

# (id, argv, fragments the error line must contain). Placeholders: {missing} a path that does
# not exist, {file} an existing file, {dir} an existing empty folder, {tmp} the test's folder.
CASES: list[tuple[str, list[str], list[str]]] = [
    # data load
    ("load-missing", ["data", "load", "{missing}"], ["PATH", "{missing}"]),
    ("load-empty-folder", ["data", "load", "{dir}"], ["{dir}", "no resale file"]),
    ("load-out-is-folder", ["data", "load", "{file}", "--out", "{dir}"], ["--out", "{dir}"]),
    ("load-bad-month", ["data", "load", "{file}", "--max-month", "2024-13"], ["--max-month"]),
    ("load-no-abbreviation", ["data", "load", "{file}", "--max", "2024-01"], ["--max"]),
    # data prepare
    ("prepare-missing", ["data", "prepare", "--source", "{missing}"], ["--source", "{missing}"]),
    ("prepare-file-as-dir", ["data", "prepare", "--data-dir", "{file}"], ["--data-dir", "{file}"]),
    ("prepare-bad-rows", ["data", "prepare", "--rows", "many"], ["--rows", "many"]),
    ("prepare-zero-rows", ["data", "prepare", "--rows", "0"], ["--rows"]),
    # data download: every case points at a closed local port, never at data.gov.sg
    (
        "download-file-as-dir",
        ["data", "download", "--base-url", CLOSED_PORT_URL, "--cache-dir", "{file}"],
        ["--cache-dir", "{file}"],
    ),
    (
        "download-under-a-file",
        ["data", "download", "--base-url", CLOSED_PORT_URL, "--cache-dir", "{file}/raw"],
        ["--cache-dir", "{file}", "cannot be created"],
    ),
    (
        "download-unknown-dataset",
        ["data", "download", "--base-url", CLOSED_PORT_URL, "1850-1860"],
        ["DATASET", "1850-1860"],
    ),
    ("download-bad-url", ["data", "download", "--base-url", "data.gov.sg"], ["--base-url"]),
    (
        "download-bad-retries",
        ["data", "download", "--base-url", CLOSED_PORT_URL, "--retries", "-1"],
        ["--retries"],
    ),
    (
        "download-closed-port",
        [
            "data",
            "download",
            "2017-onwards",
            "--base-url",
            CLOSED_PORT_URL,
            "--retries",
            "0",
            "--cache-dir",
            "{dir}",
        ],
        ["2017-onwards", "127.0.0.1:9", "What to do"],
    ),
    # data rules
    ("rules-unknown-option", ["data", "rules", "--bogus"], ["--bogus", "data rules --help"]),
    # data calibrate
    ("calibrate-missing", ["data", "calibrate", "--real", "{missing}"], ["--real", "{missing}"]),
    (
        "calibrate-no-real-file",
        ["data", "calibrate", "--real", "{dir}", "--out", "{tmp}/calibration.json"],
        ["--real", "{dir}"],
    ),
    ("calibrate-out-is-folder", ["data", "calibrate", "--out", "{dir}"], ["--out", "{dir}"]),
    # data sample
    ("sample-file-as-dir", ["data", "sample", "--out", "{file}"], ["--out", "{file}"]),
    (
        "sample-under-a-file",
        ["data", "sample", "--out", "{file}/s"],
        ["--out", "cannot be created"],
    ),
    ("sample-bad-rows", ["data", "sample", "--out", "{dir}", "--rows", "1e3"], ["--rows", "1e3"]),
    # data geocode
    ("geocode-missing", ["data", "geocode", "--source", "{missing}"], ["--source", "{missing}"]),
    ("geocode-file-as-dir", ["data", "geocode", "--cache-dir", "{file}"], ["--cache-dir"]),
    ("geocode-bad-rate", ["data", "geocode", "--rate", "0"], ["--rate"]),
    ("geocode-bad-url", ["data", "geocode", "--base-url", "ftp://x"], ["--base-url"]),
    # evaluate
    ("evaluate-no-abbreviation", ["evaluate", "--data", "{file}"], ["--data", "evaluate --help"]),
    ("evaluate-file-as-dir", ["evaluate", "--data-dir", "{file}"], ["--data-dir", "{file}"]),
    ("evaluate-missing", ["evaluate", "--source", "{missing}"], ["--source", "{missing}"]),
    ("evaluate-unknown-model", ["evaluate", "--model", "forest"], ["--model", "forest"]),
    ("evaluate-bad-cutoff", ["evaluate", "--cutoff", "Dec 2024"], ["--cutoff"]),
    # train
    ("train-file-as-dir", ["train", "--out", "{file}"], ["--out", "{file}"]),
    ("train-missing", ["train", "--source", "{missing}"], ["--source", "{missing}"]),
    ("train-bad-trials", ["train", "--tune-trials", "ten"], ["--tune-trials", "ten"]),
    ("train-bad-margin", ["train", "--margin", "-1"], ["--margin"]),
    # model list / show / promote (an empty MLflow store in the test's folder)
    ("list-bad-name", ["model", "list", "--name", "my model"], ["--name"]),
    ("list-unknown-option", ["model", "list", "--all"], ["--all", "model list --help"]),
    ("show-bad-ref", ["model", "show", "../x"], ["REF", "../x"]),
    # nothing is registered: the message says so and what to run
    ("show-unknown-alias", ["model", "show", "gold"], ["hdb-resale-price", "hdb-mlops "]),
    ("promote-bad-version", ["model", "promote", "latest"], ["version", "latest"]),
    ("promote-missing", ["model", "promote", "1", "--source", "{missing}"], ["--source"]),
    ("promote-file-as-dir", ["model", "promote", "1", "--data-dir", "{file}"], ["--data-dir"]),
    ("promote-bad-window", ["model", "promote", "1", "--window-months", "0"], ["--window-months"]),
    # serve
    ("serve-missing", ["serve", "--model", "{missing}"], ["--model", "{missing}"]),
    ("serve-file-as-dir", ["serve", "--model", "{file}"], ["--model", "{file}", "is a file"]),
    ("serve-bad-port", ["serve", "--port", "http"], ["--port", "http"]),
    ("serve-port-range", ["serve", "--port", "70000"], ["--port", "70000"]),
    ("serve-bad-workers", ["serve", "--workers", "0"], ["--workers"]),
    ("serve-bad-log-level", ["serve", "--log-level", "loud"], ["--log-level", "loud"]),
    ("serve-no-champion", ["serve", "--port", "0"], ["champion", "hdb-mlops train", "--model"]),
    # pipeline run (never reaches a notebook: every case fails before; more in IN_PROCESS)
    ("run-missing", ["pipeline", "run", "--notebooks-dir", "{missing}"], ["--notebooks-dir"]),
    ("run-file-as-dir", ["pipeline", "run", "--runs-dir", "{file}"], ["--runs-dir", "{file}"]),
    ("run-unknown-profile", ["pipeline", "run", "--profile", "huge"], ["--profile", "huge"]),
    ("run-bad-timeout", ["pipeline", "run", "--cell-timeout", "1h"], ["--cell-timeout"]),
    ("run-bad-run-id", ["pipeline", "run", "--run-id", "../x"], ["--run-id", "../x"]),
    # pipeline list
    ("list-missing", ["pipeline", "list", "--notebooks-dir", "{missing}"], ["--notebooks-dir"]),
    ("list-file-as-dir", ["pipeline", "list", "--notebooks-dir", "{file}"], ["{file}"]),
    # notebooks refresh (never reaches papermill: the name matches no notebook)
    ("refresh-unknown-name", ["notebooks", "refresh", "99_nope"], ["NAME", "99_nope"]),
    ("refresh-unknown-option", ["notebooks", "refresh", "--all"], ["--all"]),
    # the root
    ("no-verb", [], ["command"]),
    ("unknown-verb", ["deploy"], ["deploy"]),
]
# Cases whose check imports the pipeline module (and with it nbformat, seconds to import):
# run in this process, where that import is paid once.
IN_PROCESS: list[tuple[str, list[str], list[str]]] = [
    ("run-no-notebooks", ["pipeline", "run", "--notebooks-dir", "{dir}"], ["--notebooks-dir"]),
    ("run-bad-parameter", ["pipeline", "run", "-p", "rows"], ["--parameter", "rows"]),
    ("run-bad-parameter-name", ["pipeline", "run", "-p", "2x=1"], ["--parameter", "2x"]),
    ("run-unknown-only", ["pipeline", "run", "--only", "99"], ["--only", "99"]),
    ("run-unknown-from", ["pipeline", "run", "--from", "99"], ["--from", "99"]),
]
# these must write nothing anywhere, so they also run --runs-dir into the test's folder
RUNS_DIR_CASES = {c[0] for c in CASES + IN_PROCESS if c[1][:2] == ["pipeline", "run"]} - {
    "run-file-as-dir"
}


@pytest.fixture
def place(tmp_path: Path) -> dict[str, str]:
    """The placeholders of :data:`CASES`, made in ``tmp_path``."""
    (tmp_path / "a-file.txt").write_text("not a folder\n")
    (tmp_path / "an-empty-folder").mkdir()
    return {
        "missing": str(tmp_path / "no-such-folder" / "no-such-file.csv"),
        "file": str(tmp_path / "a-file.txt"),
        "dir": str(tmp_path / "an-empty-folder"),
        "tmp": str(tmp_path),
    }


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment that keeps every command out of the repository and off the internet."""
    store = tmp_path / "mlruns"
    drop = {"HDB_MLOPS_MODEL", "HDB_MLOPS_MODEL_NAME", "MLFLOW_LOGGING_LEVEL"}
    return {
        **{k: v for k, v in os.environ.items() if k not in drop},
        "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
        "HDB_MLOPS_MLFLOW_ARTIFACTS": str(store / "artifacts"),
        "HDB_MLOPS_MODEL_CACHE": str(store / "model-cache"),
        "HDB_MLOPS_DATA_DIR": str(tmp_path / "data"),
        "HDB_MLOPS_REAL_DATA": str(tmp_path / "no-real-data"),
        "HDB_MLOPS_DATAGOV_URL": CLOSED_PORT_URL,
        "HDB_MLOPS_ONEMAP_URL": CLOSED_PORT_URL,
    }


def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdb_mlops.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def assert_one_line_error(out: subprocess.CompletedProcess, fragments: list[str]) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert out.returncode == 2, (out.returncode, line)
    return line


@pytest.mark.parametrize(("argv", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_failure_is_one_error_line_with_status_2(request, argv, fragments, place, env):
    argv = [a.format(**place) for a in argv]
    if request.node.callspec.id in RUNS_DIR_CASES:
        argv += ["--runs-dir", str(Path(place["tmp"]) / "runs")]
    out = run_cli(argv, env, cwd=Path(place["tmp"]))
    assert_one_line_error(out, [f.format(**place) for f in fragments])
    assert not (Path(place["tmp"]) / "runs").exists(), "a pipeline run started"


@pytest.mark.parametrize(
    ("argv", "fragments"), [c[1:] for c in IN_PROCESS], ids=[c[0] for c in IN_PROCESS]
)
def test_pipeline_usage_errors_are_found_before_any_notebook_runs(
    request, argv, fragments, place, capsys
):
    argv = [a.format(**place) for a in argv]
    if request.node.callspec.id in RUNS_DIR_CASES:
        argv += ["--runs-dir", str(Path(place["tmp"]) / "runs")]
    try:
        status = cli.main(argv)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err
    out = subprocess.CompletedProcess(argv, status, "", err)
    assert_one_line_error(out, [f.format(**place) for f in fragments])
    assert not (Path(place["tmp"]) / "runs").exists(), "a pipeline run started"


def test_serve_names_a_port_in_use_and_a_host_not_of_this_machine(place, env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        out = run_cli(["serve", "--port", port], env, Path(place["tmp"]))
    assert_one_line_error(out, ["--port", f"127.0.0.1:{port}", "in use"])
    # an address of no machine (TEST-NET-1): no DNS lookup involved
    out = run_cli(["serve", "--host", "192.0.2.1"], env, Path(place["tmp"]))
    assert_one_line_error(out, ["--host", "192.0.2.1"])


def test_a_missing_model_in_the_environment_is_named(place, env):
    out = run_cli(["serve"], {**env, "HDB_MLOPS_MODEL": place["missing"]}, Path(place["tmp"]))
    assert_one_line_error(out, ["$HDB_MLOPS_MODEL", place["missing"]])


# ----------------------------------------------------------------------------- in process


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and every sub-parser below it."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += parsers(child)
    return found


def test_no_parser_accepts_abbreviations():
    every = parsers(cli.build_parser())
    assert len(every) >= 20
    assert all(p.allow_abbrev is False for p in every)
    assert all(isinstance(p, cli_args.Parser) for p in every)


LEAVES = [p.prog.split(" ", 1)[1] for p in parsers(cli.build_parser()) if "func" in p._defaults]


@pytest.mark.parametrize("verb", LEAVES)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.build_parser().parse_args([*verb.split(), "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: hdb-mlops {verb}")


def test_cli_lists_agree_with_the_package():
    from hdb_mlops.cli import model, serve
    from hdb_mlops.course import pipeline
    from hdb_mlops.model import models
    from hdb_mlops.model.registry import DEFAULT_NAME
    from hdb_mlops.serving import loading

    assert tuple(models.MODELS) == model.MODEL_NAMES
    assert model.DEFAULT_REGISTERED_NAME == DEFAULT_NAME
    assert set(config.PROFILE_SETTINGS) == set(pipeline.PROFILES)
    assert serve.MODEL_ENV == loading.MODEL_ENV
    assert serve._ALIAS_RE.pattern == loading._ALIAS_RE.pattern


def test_importing_the_cli_and_building_the_parser_stays_light():
    code = (
        "import sys, hdb_mlops.cli as c; c.build_parser();"
        "print([m for m in ('pandas', 'numpy', 'mlflow', 'xgboost', 'fastapi', 'sagemaker',"
        " 'papermill', 'nbformat', 'requests') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("exc", "fragments"),
    [
        (NotADirectoryError(20, "Not a directory", "data/x/interim"), ["data/x/interim", "file"]),
        (IsADirectoryError(21, "Is a directory", "models"), ["models", "folder"]),
        (PermissionError(13, "Permission denied", "/root/x"), ["/root/x", "permissions"]),
        (FileNotFoundError(2, "No such file or directory", "a.csv"), ["a.csv"]),
        (KeyError("unknown dataset 'x'"), ["unknown dataset 'x'"]),
        (ValueError("first line\n  second line\n"), ["first line; second line"]),
        (ModuleNotFoundError("No module named 'mlflow'", name="mlflow"), ["pip install", "track"]),
        (TypeError("oops"), ["TypeError: oops", "-v"]),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)
def test_main_prints_any_error_on_one_line(monkeypatch, capsys, exc, fragments):
    def boom(args):
        raise exc

    monkeypatch.setattr("hdb_mlops.cli.data.cmd_data_rules", boom)
    assert cli.main(["data", "rules"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err


def test_a_failed_pipeline_run_exits_1_on_one_line(monkeypatch, capsys):
    from hdb_mlops.course.pipeline import PipelineError

    def failed(args):
        raise PipelineError("notebook 02 failed at cell 2: ValueError: x\nmanifest: m.json")

    monkeypatch.setattr("hdb_mlops.cli.data.cmd_data_rules", failed)
    assert cli.main(["data", "rules"]) == 1
    assert capsys.readouterr().err == (
        "error: notebook 02 failed at cell 2: ValueError: x; manifest: m.json\n"
    )


def test_path_types_name_what_is_wrong(tmp_path):
    folder, file = tmp_path / "folder", tmp_path / "file.csv"
    folder.mkdir()
    file.write_text("x\n")
    cases = [
        (cli_args.existing_file, folder, "is a folder, expected a file"),
        (cli_args.existing_file, tmp_path / "nope.csv", "no such file"),
        (cli_args.existing_dir, file, "is a file, expected a folder"),
        (cli_args.existing_dir, tmp_path / "nope", "no such folder"),
        (cli_args.new_or_existing_dir, file / "sub", "cannot be created"),
        (cli_args.new_file, folder, "is a folder, expected a file"),
    ]
    for check, path, message in cases:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            check(str(path))
    assert cli_args.existing_file(str(file)) == file
    assert (
        cli_args.new_or_existing_dir(str(tmp_path / "new" / "deeper"))
        == tmp_path / "new" / "deeper"
    )
    assert not (tmp_path / "new").exists()  # checking creates nothing
