"""Contracts around the service that need no running container: the Dockerfile (its
entrypoint is a real command of the package, every COPY source exists and reaches the build
context, the user is not root) and the OpenAPI document (its enums are the served model's own
categories)."""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import re
import shlex
import tomllib
from pathlib import Path

import httpx
import pandas as pd
import pytest

from hdb_mlops.data import storage
from hdb_mlops.model.bundle import residual_quantiles, save_bundle
from hdb_mlops.model.features import FeatureSpec
from hdb_mlops.model.models import LinearModel
from hdb_mlops.serving.app import create_app
from hdb_mlops.serving.server import serve_in_thread

PROJECT = Path(__file__).resolve().parents[1]
DOCKERFILE = PROJECT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def dockerignore_patterns() -> list[str]:
    path = PROJECT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    return [x.strip() for x in lines if x.strip() and not x.strip().startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``relative`` (or a parent of it) out of the context."""
    parts = Path(relative).parts
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for i in range(1, len(parts) + 1):
            candidate = "/".join(parts[:i])
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(
                candidate, pattern.removeprefix("**/")
            ):
                result = not negate
    return result


def entrypoint() -> list[str]:
    entries = [args for keyword, args in instructions() if keyword == "ENTRYPOINT"]
    assert len(entries) == 1, "exactly one ENTRYPOINT"
    value = json.loads(entries[0])
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), "exec form"
    return value


def parse(argv: list[str]) -> argparse.Namespace:
    from hdb_mlops.cli import build_parser

    return build_parser().parse_args(argv)


# ------------------------------------------------------------------------- Dockerfile


def test_base_image_is_python_311_slim_pinned_by_tag():
    froms = [args for keyword, args in instructions() if keyword == "FROM"]
    assert froms and froms[0].split()[0] == "python:3.11-slim"
    assert all(":latest" not in f and ":" in f.split()[0] for f in froms)


def test_entrypoint_is_the_packages_serve_command():
    command, *argv = entrypoint()
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[command] == "hdb_mlops.cli:main"
    assert argv[0] == "serve"
    args = parse(argv)
    assert args.command == "serve"
    assert args.host == "0.0.0.0"
    assert int(args.port) == 8080
    assert callable(args.func)
    # the options the lead's CLI promises: --workers and --model
    more = parse([*argv, "--workers", "2", "--model", "/opt/ml/model"])
    assert int(more.workers) == 2 and more.model == "/opt/ml/model"


def test_serve_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--workers", "--model"):
        assert option in text


def test_entrypoint_accepts_sagemakers_serve_argument():
    """SageMaker starts an inference image as ``docker run IMAGE serve``: the word is appended
    to the ENTRYPOINT, so the CLI must accept (and ignore) a trailing ``serve``."""
    _, *argv = entrypoint()
    with contextlib.redirect_stderr(io.StringIO()):
        args = parse([*argv, "serve"])
    assert args.command == "serve" and args.host == "0.0.0.0"


def test_port_user_and_install():
    found = instructions()
    exposed = [args for keyword, args in found if keyword == "EXPOSE"]
    assert exposed == ["8080"]
    users = [args for keyword, args in found if keyword == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    last_user = max(i for i, (keyword, _) in enumerate(found) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in found[last_user:]), "USER after the last RUN"
    runs = " ".join(args for keyword, args in found if keyword == "RUN")
    words = shlex.split(runs)
    assert "requirements.lock" in words, "dependencies come from the lock"
    i = words.index("requirements.lock")
    assert words[i - 1] in ("-c", "--constraint", "-r", "--requirement")
    assert any(w.startswith(".[") or w == "." for w in words), "the package itself is installed"


def test_every_copy_source_exists_and_is_in_the_build_context():
    patterns = dockerignore_patterns()
    copies = [args for keyword, args in instructions() if keyword in ("COPY", "ADD")]
    assert copies
    for args in copies:
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in shlex.split(args))
        *sources, _dest = words
        assert sources, args
        for source in sources:
            assert (PROJECT / source).exists(), f"COPY source {source} does not exist"
            assert not ignored(source, patterns), f"{source} is excluded by .dockerignore"
    # and what must stay out of the image does
    for heavy in (".venv", ".git", "data", "runs", "notebooks", "mlruns", "tests"):
        assert ignored(heavy, patterns), heavy


def test_image_serves_the_sagemaker_model_directory():
    envs = " ".join(args for keyword, args in instructions() if keyword == "ENV")
    assert "HDB_MLOPS_MODEL=/opt/ml/model" in envs


# ------------------------------------------------------------------------- OpenAPI


@pytest.fixture(scope="module")
def three_town_bundle(tmp_path_factory) -> tuple[Path, tuple[str, ...]]:
    """A ridge model whose feature spec knows three towns only."""
    tx = storage.prepare("sample", tmp_path_factory.mktemp("data")).transactions()
    towns = ("BEDOK", "PUNGGOL", "YISHUN")
    spec = FeatureSpec(categorical={**FeatureSpec().categorical, "town": towns})
    rows = tx[tx["town"].isin(towns)]
    fit = rows[rows["month"] <= pd.Period("2024-12", freq="M")]
    valid = rows[rows["month"] > pd.Period("2024-12", freq="M")]
    model = LinearModel(spec=spec).fit(fit)
    pred = model.predict(valid)
    path = save_bundle(
        model,
        tmp_path_factory.mktemp("bundle") / "three-towns",
        metrics={},
        residual_quantiles=residual_quantiles(valid["resale_price"], pred),
        profile={},
        data_hash=None,
        git=None,
    )
    return path, towns


def test_openapi_enums_come_from_the_models_spec(three_town_bundle):
    path, towns = three_town_bundle
    row = {
        "month": "2025-03",
        "town": "punggol",
        "flat_type": "4 ROOM",
        "storey_range": "10 TO 12",
        "floor_area_sqm": 93,
        "flat_model": "Model A",
        "lease_commence_date": 2015,
    }
    with serve_in_thread(create_app(path, max_batch=50)) as url:
        doc = httpx.get(f"{url}/openapi.json").json()
        record = doc["components"]["schemas"]["Record"]
        # a category is the enum of the model's categories, or the same in any case
        enum, any_case = record["properties"]["town"]["anyOf"]
        assert enum == {"type": "string", "enum": list(towns)}
        assert re.fullmatch(any_case["pattern"], " punggol ")
        assert not re.fullmatch(any_case["pattern"], "ANG MO KIO")
        assert record["additionalProperties"] is False
        assert "4 ROOM" in record["properties"]["flat_type"]["anyOf"][0]["enum"]
        assert set(record["required"]) == {
            "month",
            "town",
            "flat_type",
            "storey_range",
            "floor_area_sqm",
            "flat_model",
            "lease_commence_date",
        }
        batch = doc["components"]["schemas"]["BatchRequest"]["properties"]["records"]
        assert batch["maxItems"] == 50
        assert httpx.post(f"{url}/predict", json=row).status_code == 200
        response = httpx.post(f"{url}/predict", json={**row, "town": "BEDOK NORTH"})
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "town"
        response = httpx.post(f"{url}/predict", json={**row, "town": "ANG MO KIO"})
        assert response.status_code == 422  # a real town, but not one this model knows


def test_openapi_documents_every_route_and_error(three_town_bundle):
    path, _ = three_town_bundle
    with serve_in_thread(create_app(path)) as url:
        doc = httpx.get(f"{url}/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {
        "/predict",
        "/predict/batch",
        "/health",
        "/ready",
        "/model",
        "/metrics",
        "/ping",
        "/invocations",
        "/admin/reload",
    }
    reload_answers = paths["/admin/reload"]["post"]["responses"]
    for code in ("200", "401", "403", "409"):
        assert code in reload_answers, code
    for route in ("/predict", "/predict/batch", "/invocations"):
        responses = paths[route]["post"]["responses"]
        for code in ("200", "400", "413", "415", "422", "503"):
            assert code in responses, (route, code)
        assert responses["422"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
    invocations = paths["/invocations"]["post"]["requestBody"]["content"]
    assert set(invocations) == {"application/json", "text/csv"}
    assert "406" in paths["/invocations"]["post"]["responses"]
    prediction = doc["components"]["schemas"]["Prediction"]
    assert set(prediction["required"]) == {"prediction_id", "price", "interval", "model"}
