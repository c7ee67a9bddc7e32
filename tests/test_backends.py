"""The backend switch (hdb_mlops.cloud.backends): moto on loopback, local refuses AWS
calls, aws builds from a profile without touching the network."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.parse

import pytest

pytest.importorskip("boto3", reason="the aws extra is not installed: pip install -e '.[aws]'")
pytest.importorskip("moto", reason="the aws extra is not installed: pip install -e '.[aws]'")

from hdb_mlops.cloud.backends import (
    BACKENDS,
    LocalBackendError,
    moto_server,
    open_backend,
)


def _accepts_connections(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def test_the_backends_are_local_moto_and_aws():
    assert BACKENDS == ("local", "moto", "aws")


def test_moto_backend_runs_its_own_server_on_loopback_and_stops_it():
    with open_backend("moto") as ctx:
        url = ctx.endpoint_url
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "127.0.0.1" and parts.port and parts.port != 5000
        assert _accepts_connections(url)
        s3 = ctx.client("s3")
        assert s3.meta.endpoint_url == url
        assert s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}  # no retry
        s3.create_bucket(
            Bucket="backend-test", CreateBucketConfiguration={"LocationConstraint": ctx.region}
        )
        assert "backend-test" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert ctx.client("sts").get_caller_identity()["Account"] == "123456789012"
        env = ctx.environment()
        assert env["AWS_ENDPOINT_URL"] == url and env["AWS_ACCESS_KEY_ID"] == "testing"
    assert not _accepts_connections(url)


def test_moto_backend_uses_a_given_server_and_leaves_it_running():
    with moto_server() as url:
        with open_backend("moto", endpoint_url=url, prefix="given-hdb") as ctx:
            assert ctx.endpoint_url == url and ctx.prefix == "given-hdb"
            ctx.client("s3").list_buckets()
        assert _accepts_connections(url)


def test_reset_moto_empties_the_account():
    """In a process of its own: moto's state is per process, and this test wipes it."""
    script = """
from hdb_mlops.cloud.backends import moto_server, open_backend, reset_moto
with moto_server() as url, open_backend("moto", endpoint_url=url) as ctx:
    s3 = ctx.client("s3")
    s3.create_bucket(Bucket="reset-test", CreateBucketConfiguration={"LocationConstraint": ctx.region})
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["reset-test"]
    reset_moto(url)
    assert s3.list_buckets()["Buckets"] == []
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_an_unknown_backend_names_the_allowed_ones():
    allowed = r"unknown backend 'gcp': choose one of local, moto, aws"
    with pytest.raises(ValueError, match=allowed), open_backend("gcp"):
        pass


def test_the_local_backend_makes_no_aws_call():
    with open_backend("local") as ctx:
        assert ctx.endpoint_url is None
        with pytest.raises(LocalBackendError, match="the local backend makes no AWS calls"):
            ctx.client("s3")
        with pytest.raises(LocalBackendError, match="use --backend moto or --backend aws"):
            ctx.session()
        assert ctx.environment() == {}


@pytest.fixture
def aws_profile(tmp_path, monkeypatch):
    """A made-up AWS profile ``course`` (eu-west-1) in files of its own."""
    config = tmp_path / "config"
    config.write_text("[profile course]\nregion = eu-west-1\n")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[course]\naws_access_key_id = AKIDCOURSE\naws_secret_access_key = not-a-secret\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    return "course"


def test_the_aws_backend_is_built_from_a_profile_without_network(aws_profile, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the aws backend touched the network while being set up")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with open_backend("aws", profile=aws_profile, prefix="prod-hdb") as ctx:
        assert (ctx.backend, ctx.region, ctx.prefix) == ("aws", "eu-west-1", "prod-hdb")
        assert ctx.session().profile_name == "course"
        s3 = ctx.client("s3")
        assert s3.meta.region_name == "eu-west-1"
        assert "amazonaws.com" in s3.meta.endpoint_url
        assert s3.meta.config.retries["mode"] == "standard"
        credentials = ctx.session().get_credentials()
        assert credentials.access_key == "AKIDCOURSE"
        assert ctx.environment() == {
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_REGION": "eu-west-1",
            "AWS_PROFILE": "course",
        }


def test_the_aws_backend_takes_an_explicit_region_over_the_profiles(aws_profile):
    with open_backend("aws", profile=aws_profile, region="ap-southeast-1") as ctx:
        assert ctx.client("sts").meta.region_name == "ap-southeast-1"


def test_the_aws_backend_names_a_missing_profile(aws_profile):
    from botocore.exceptions import ProfileNotFound

    with pytest.raises(ProfileNotFound, match="nosuch"), open_backend("aws", profile="nosuch"):
        pass


def test_the_moto_server_command_serves_until_interrupted():
    import signal

    command = [sys.executable, "-m", "hdb_mlops.cli", "infra", "moto-server", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = process.stdout.readline()
        url = first.split()[3]
        assert first.startswith("moto server on http://127.0.0.1:"), first
        assert _accepts_connections(url)
        with open_backend("moto", endpoint_url=url) as ctx:
            assert ctx.client("sts").get_caller_identity()["Account"] == "123456789012"
    finally:
        process.send_signal(signal.SIGINT)
        status = process.wait(timeout=60)
    assert status == 0, process.stderr.read()[-2000:]
    assert not _accepts_connections(url)
