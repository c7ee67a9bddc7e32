"""The pipeline on a real moto server (HTTP on 127.0.0.1): upsert and start, the artifacts
where the jobs would write them, the model package registered pending approval, then
approved or rejected; and ModelBuilder's in-process endpoint serving the artifact.

moto records rather than simulates (an execution "succeeds" without running a step), so
the computation is the entry scripts' own, run by the local runner; these tests check the
control-plane calls and what they leave on the server."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

pytest.importorskip(
    "sagemaker.mlops", reason="the aws extra is not installed: pip install -e '.[aws]'"
)
pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")

from netguard import NetworkGuard

from hdb_mlops.cloud.backends import moto_server, open_backend
from hdb_mlops.cloud.promote import sha256_of
from hdb_mlops.cloud.sagemaker import registry
from hdb_mlops.cloud.sagemaker.definition import PipelineSettings, definition_json
from hdb_mlops.cloud.sagemaker.execution import split_s3_uri, upsert_and_start

GROUP = "hdb-resale-price"


def _cli(*argv: str) -> tuple[int, str]:
    from hdb_mlops.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A moto server, and one pipeline run on it through the CLI (under the network guard)."""
    guard = NetworkGuard()
    work = tmp_path_factory.mktemp("sagemaker-moto")
    with moto_server(fresh=True) as url, pytest.MonkeyPatch.context() as mp:
        guard.install(mp)
        status, out = _cli(
            "sagemaker", "run", "--backend", "moto", "--endpoint-url", url, "--rows", "3000",
            "--param", "n_estimators=80", "--run-dir", str(work / "run"), "--json",
        )  # fmt: skip
        yield {"url": url, "status": status, "summary": json.loads(out), "guard": guard}
    guard.assert_offline()


@pytest.fixture
def ctx(server):
    with open_backend("moto", endpoint_url=server["url"]) as context:
        yield context


def test_upsert_stores_the_offline_definition_and_start_records_an_execution(ctx):
    settings = PipelineSettings(name="hdb-mlops-upsert-test")
    started = upsert_and_start(ctx, settings, {"MapeThreshold": 6.5})
    sm = ctx.client("sagemaker")
    stored = json.loads(sm.describe_pipeline(PipelineName=settings.name)["PipelineDefinition"])
    offline = json.loads(definition_json(settings))
    assert [s["Name"] for s in stored["Steps"]] == [s["Name"] for s in offline["Steps"]]
    assert stored["Parameters"] == offline["Parameters"]
    executions = sm.list_pipeline_executions(PipelineName=settings.name)[
        "PipelineExecutionSummaries"
    ]
    assert [e["PipelineExecutionArn"] for e in executions] == [started["execution_arn"]]
    described = sm.describe_pipeline_execution(PipelineExecutionArn=started["execution_arn"])
    assert described["PipelineExecutionStatus"] == started["status"]
    # upsert again: an update of the same pipeline, not a second one
    upsert_and_start(ctx, settings)
    names = [p["PipelineName"] for p in sm.list_pipelines()["PipelineSummaries"]]
    assert names.count(settings.name) == 1


def test_the_run_leaves_the_artifacts_where_the_jobs_write_them(server, ctx):
    assert server["status"] == 0
    summary = server["summary"]
    assert summary["status"] == "Succeeded" and summary["execution_status"]
    s3 = ctx.client("s3")
    bucket, key = split_s3_uri(summary["model_data_url"])
    assert key.endswith(f"training/{summary['execution_id']}/output/model.tar.gz")
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    local = Path(summary["run_dir"]) / "s3/train/output/model.tar.gz"
    assert body == local.read_bytes() and sha256_of(local) == summary["digest"]
    bucket, key = split_s3_uri(summary["evaluation_uri"])
    evaluation = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert evaluation["regression_metrics"]["mape"]["value"] == summary["metrics"]["mape"]
    raw = s3.list_objects_v2(Bucket=bucket, Prefix="hdb-mlops/build/input/raw/")["Contents"]
    assert [o["Key"].rsplit("/", 1)[-1] for o in raw] == ["resale-flat-prices-sample.csv"]


def test_the_model_is_registered_pending_approval_with_its_digest(server, ctx):
    package = server["summary"]["model_package"]
    assert package["status"] == registry.PENDING
    assert package["digest"] == server["summary"]["digest"]
    described = ctx.client("sagemaker").describe_model_package(ModelPackageName=package["arn"])
    assert described["ModelApprovalStatus"] == "PendingManualApproval"
    statistics = described["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["S3Uri"] == server["summary"]["evaluation_uri"]
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == server["summary"]["model_data_url"]


def test_the_approval_is_walked_by_digest_and_rejection_is_recorded(server, ctx):
    digest = server["summary"]["digest"]
    status, out = _cli(
        "sagemaker", "approve", "--backend", "moto", "--endpoint-url", server["url"],
        "--version", f"sha256:{digest}", "--note", "looks right", "--json",
    )  # fmt: skip
    assert status == 0 and json.loads(out)["status"] == "Approved"
    second = registry.register_model(
        ctx, GROUP, model_data_url="s3://hdb-mlops-dev-artifacts/x/model.tar.gz",
        image_uri="123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/hdb-mlops:latest",
        digest="0" * 64,
    )  # fmt: skip
    assert second.version == registry.resolve(ctx, GROUP, "latest").version
    status, out = _cli(
        "sagemaker",
        "approve",
        "--backend",
        "moto",
        "--endpoint-url",
        server["url"],
        "--reject",
        "--json",
    )
    assert status == 0 and json.loads(out)["version"] == second.version
    statuses = {p.version: p.status for p in registry.list_packages(ctx, GROUP)}
    assert statuses[second.version] == registry.REJECTED
    assert [p.digest for p in registry.list_packages(ctx, GROUP, registry.APPROVED)] == [digest]
    # the metadata (the digest) survives the approval
    assert registry.resolve(ctx, GROUP, f"sha256:{digest}").status == registry.APPROVED


def test_nothing_pending_is_a_usage_error_in_one_line(server, capsys):
    from hdb_mlops.cli import main

    assert (
        main(
            [
                "sagemaker",
                "approve",
                "--backend",
                "moto",
                "--endpoint-url",
                server["url"],
                "--group",
                "nope",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model package group 'nope' has no version")


def test_modelbuilder_serves_the_artifact_in_process(server, ctx, monkeypatch):
    import pandas as pd

    from hdb_mlops.cloud.sagemaker.deploy import check_in_process
    from hdb_mlops.cloud.sagemaker.entrypoints.contract import read_table

    guard = NetworkGuard().install(monkeypatch)
    run_dir = server["summary"]["run_dir"]
    test_rows = read_table(f"{run_dir}/s3/prepare/output/test").drop(columns="row_id").head(15)
    assert isinstance(test_rows, pd.DataFrame)
    result = check_in_process(f"{run_dir}/s3/train/output/model.tar.gz", test_rows, ctx=ctx)
    assert result["predictions_agree"] is True and result["rows"] == 15
    guard.assert_offline()
