"""Promotion of one artifact by digest: dev <- the build, uat <- dev, prod <- uat; refused
when the digest is not in the previous environment or the bytes do not match it. On the
local folder backend and on a real moto server."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hdb_mlops.cloud import promote as P
from hdb_mlops.cloud.backends import moto_server, open_backend


@pytest.fixture(scope="module")
def moto_url():
    pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")
    with moto_server(fresh=True) as url:
        yield url


@pytest.fixture(params=["local", "moto"])
def ctx(request, moto_url):
    # each test its own prefix: its own buckets (moto) and folders (local)
    prefix = f"t{abs(hash(request.node.name)) % 10**8}"
    url = moto_url if request.param == "moto" else None
    with open_backend(request.param, endpoint_url=url, prefix=prefix) as context:
        yield context


@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "a" / "model.tar.gz", tmp_path / "b" / "model.tar.gz"
    for path in (first, second):
        path.parent.mkdir()
        path.write_bytes(os.urandom(4096))
    return first, second


def test_one_artifact_goes_dev_uat_prod_by_its_digest(ctx, artifacts, tmp_path):
    built, _ = artifacts
    root = tmp_path / "envs"
    dev = P.promote(ctx, built, "dev", root=root)
    assert dev.digest == P.sha256_of(built)
    uat = P.promote(ctx, None, "uat", root=root)  # what dev runs
    prod = P.promote(ctx, None, "prod", root=root, digest=dev.digest)
    assert uat.digest == prod.digest == dev.digest
    store = P.store_for(ctx, root)
    assert {env: m["digest"] for env, m in P.status(store).items()} == dict.fromkeys(
        P.ENVIRONMENTS, dev.digest
    )
    assert dev.manifest["source"] == {"build": str(built.resolve())}
    assert uat.manifest["source"] == {"environment": "dev"}
    assert prod.manifest["source"] == {"environment": "uat"}
    # the same bytes arrived in prod
    fetched = P.fetch(store, "prod", tmp_path / "fetched" / "model.tar.gz")
    assert fetched.read_bytes() == built.read_bytes()
    if ctx.backend == "moto":
        assert prod.location.startswith(f"s3://{ctx.prefix}-prod-artifacts/artifacts/sha256/")


def test_uat_refuses_a_digest_that_is_not_in_dev(ctx, artifacts, tmp_path):
    built, other = artifacts
    root = tmp_path / "envs"
    with pytest.raises(P.PromotionError, match="nothing has been promoted to dev"):
        P.promote(ctx, None, "uat", root=root)
    P.promote(ctx, built, "dev", root=root)
    with pytest.raises(P.PromotionError, match=r"is not in dev: promote it there first"):
        P.promote(ctx, other, "uat", root=root)
    with pytest.raises(P.PromotionError, match=r"is not in dev"):
        P.promote(ctx, None, "uat", root=root, digest=P.sha256_of(other))
    assert P.manifest(P.store_for(ctx, root), "uat") is None


def test_prod_refuses_what_uat_does_not_have(ctx, artifacts, tmp_path):
    built, _ = artifacts
    root = tmp_path / "envs"
    dev = P.promote(ctx, built, "dev", root=root)
    with pytest.raises(P.PromotionError, match=r"is not in uat"):
        P.promote(ctx, None, "prod", root=root, digest=dev.digest)
    with pytest.raises(P.PromotionError, match="nothing has been promoted to uat"):
        P.promote(ctx, None, "prod", root=root)


def test_tampered_bytes_are_refused(ctx, artifacts, tmp_path):
    built, other = artifacts
    root = tmp_path / "envs"
    dev = P.promote(ctx, built, "dev", root=root)
    store = P.store_for(ctx, root)
    store.upload("dev", P.artifact_key(dev.digest), other)  # someone replaces the bytes in dev
    with pytest.raises(P.PromotionError, match="refusing it"):
        P.promote(ctx, None, "uat", root=root)
    with pytest.raises(P.PromotionError, match="not the digest given"):
        P.promote(ctx, built, "dev", root=root, digest=P.sha256_of(other))


def test_each_environment_keeps_its_manifest_and_history(ctx, artifacts, tmp_path):
    first, second = artifacts
    root = tmp_path / "envs"
    a = P.promote(ctx, first, "dev", root=root)
    again = P.promote(ctx, first, "dev", root=root)
    b = P.promote(ctx, second, "dev", root=root, note="a better model")
    assert again.unchanged and not b.unchanged
    current = P.manifest(P.store_for(ctx, root), "dev")
    assert current["digest"] == b.digest
    assert current["previous_digest"] == a.digest
    assert current["note"] == "a better model"
    assert current["bytes"] == second.stat().st_size
    if ctx.backend == "local":
        history = sorted((root / f"{ctx.prefix}-dev" / "manifests").glob("*.json"))
        assert [json.loads(p.read_text())["digest"] for p in history][-1] == b.digest
        assert len(history) == 3


def test_bad_input_is_refused_with_a_reason(ctx, tmp_path):
    with pytest.raises(P.PromotionError, match="not a sha256 digest"):
        P.promote(ctx, None, "uat", root=tmp_path, digest="abc")
    with pytest.raises(P.PromotionError, match="unknown environment"):
        P.promote(ctx, None, "staging", root=tmp_path)
    with pytest.raises(P.PromotionError, match="dev takes the built artifact"):
        P.promote(ctx, None, "dev", root=tmp_path)


def test_the_cli_promotes_and_reports_a_refusal_in_one_line(artifacts, tmp_path, capsys):
    from hdb_mlops.cli import main

    built, _ = artifacts
    root = str(tmp_path / "envs")
    assert main(["promote", "--to", "dev", "--artifact", str(built), "--root", root, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["digest"] == P.sha256_of(built) and shown["environment"] == "dev"
    assert main(["promote", "--to", "prod", "--root", root]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing has been promoted to uat")
    assert main(["sagemaker", "environments", "--root", root, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["dev"]["digest"] == shown["digest"] and status["uat"] is None


def test_on_a_stage2_stack_the_environment_uses_the_stacks_artifact_bucket(moto_url, artifacts):
    """Chapter 4's stack for ``<prefix>-dev`` names its artifact bucket
    ``<prefix>-dev-artifacts-<account>-<region>``: the dev store is that bucket. Its policy
    refuses requests without TLS, and moto's endpoint here is plain HTTP: the promotion is
    refused, as it would be from any client that does not use TLS."""
    from hdb_mlops.cloud import infra

    built, _ = artifacts
    with open_backend("moto", endpoint_url=moto_url, prefix="stk") as ctx:
        deployed = infra.deploy(ctx, prefix="stk-dev", params={"Environment": "dev"})
        bucket = deployed.outputs["ArtifactBucketName"]
        assert bucket == f"stk-dev-artifacts-123456789012-{ctx.region}"
        store = P.store_for(ctx)
        assert store.bucket("dev") == bucket
        assert store.bucket("uat") == "stk-uat-artifacts"  # no stack for uat: the default name
        with pytest.raises(Exception, match=r"Forbidden|AccessDenied"):
            P.promote(ctx, built, "dev")
