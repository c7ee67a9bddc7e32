"""The backend switch every cloud call goes through: ``local``, ``moto`` or ``aws``.

- ``local``: no AWS client at all. :meth:`CloudContext.client` and
  :meth:`CloudContext.session` raise :class:`LocalBackendError`, so code that would reach
  AWS on the local path fails loudly instead of quietly using whatever credentials the
  machine has.
- ``moto``: a moto server on the loopback interface (one this process starts, or the one at
  ``endpoint_url``). Dummy credentials, and botocore retries off: moto answers an
  unimplemented call with HTTP 500, which botocore would otherwise retry for seconds.
- ``aws``: the user's own profile and region (the standard credential chain). Never used in
  the tests.

boto3 and moto are imported inside the functions, never at ``import hdb_mlops``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import boto3

#: The backends :func:`open_backend` knows.
BACKENDS = ("local", "moto", "aws")
#: The region used when none is given and the profile names none (Singapore).
DEFAULT_REGION = "ap-southeast-1"
#: The resource name prefix used when none is given.
DEFAULT_PREFIX = "hdb-mlops"
#: What a prefix may be (the template's ``Prefix`` AllowedPattern: lower case, 3-20
#: characters, so that every bucket name stays valid and under 63 characters).
PREFIX_PATTERN = "^[a-z][a-z0-9-]{1,18}[a-z0-9]$"
#: The dummy credentials of the moto backend (moto accepts any).
MOTO_CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_session_token": "testing",
}


class LocalBackendError(RuntimeError):
    """An AWS call was asked of the ``local`` backend, which makes none."""


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`; a ``ValueError`` naming them otherwise."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return backend


@dataclass
class CloudContext:
    """Where cloud calls go: the backend, its region and endpoint, and the name prefix.

    Build it with :func:`open_backend`; ``client("s3")`` then gives a client configured for
    the backend (endpoint, credentials and retries for moto; the profile for aws).
    """

    backend: str
    region: str
    endpoint_url: str | None
    prefix: str
    profile: str | None = None
    _session: Any = field(default=None, init=False, repr=False, compare=False)
    _clients: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_backend(self.backend)

    def _refuse(self, what: str) -> LocalBackendError:
        return LocalBackendError(
            f"the local backend makes no AWS calls (asked for {what}): "
            "use --backend moto or --backend aws"
        )

    def session(self) -> boto3.Session:
        """The boto3 session of this backend (made once, then reused)."""
        if self.backend == "local":
            raise self._refuse("a boto3 session")
        if self._session is None:
            import boto3

            if self.backend == "moto":
                self._session = boto3.Session(region_name=self.region, **MOTO_CREDENTIALS)
            else:
                self._session = boto3.Session(profile_name=self.profile, region_name=self.region)
        return self._session

    def client_config(self) -> Any:
        """The botocore ``Config`` of this backend's clients (no retries on moto)."""
        from botocore.config import Config

        if self.backend == "moto":
            return Config(
                retries={"max_attempts": 0, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            )
        return Config(retries={"mode": "standard"})

    def client(self, service: str, **kw: Any) -> Any:
        """A boto3 client for ``service`` (``kw`` passed on; a ``config`` is merged).

        Without ``kw`` the client is made once and reused (botocore clients are thread-safe;
        making one costs tens of milliseconds)."""
        if self.backend == "local":
            raise self._refuse(f"a {service} client")
        if not kw and service in self._clients:
            return self._clients[service]
        cache = not kw
        config = self.client_config()
        if kw.get("config") is not None:
            config = config.merge(kw.pop("config"))
        kw["config"] = config
        if self.backend == "moto":
            kw.setdefault("endpoint_url", self.endpoint_url)
        client = self.session().client(service, **kw)
        if cache:
            self._clients[service] = client
        return client

    def environment(self) -> dict[str, str]:
        """Environment variables that point a child process (boto3, the AWS CLI, the
        SageMaker SDK) at this backend; empty for ``local``."""
        if self.backend == "local":
            return {}
        env = {"AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region}
        if self.backend == "moto":
            env.update({key.upper(): value for key, value in MOTO_CREDENTIALS.items()})
            if self.endpoint_url:
                env["AWS_ENDPOINT_URL"] = self.endpoint_url
        elif self.profile:
            env["AWS_PROFILE"] = self.profile
        return env


@contextmanager
def moto_server(port: int = 0, *, fresh: bool = False) -> Iterator[str]:
    """Run a moto server on 127.0.0.1 (``port`` 0: an ephemeral one); yield its URL; stop it.

    The server runs in a thread of this process, and moto keeps one state per process: every
    moto server of the process (and ``mock_aws``) sees the same account. ``fresh`` empties
    that account first (:func:`reset_moto`); otherwise use distinct name prefixes. Its
    per-request log lines (werkzeug's, at INFO) are kept off stderr meanwhile.
    """
    from moto.server import ThreadedMotoServer

    requests_log = logging.getLogger("werkzeug")
    level = requests_log.level
    requests_log.setLevel(max(level, logging.WARNING))
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        host, bound = server.get_host_and_port()
        url = f"http://{host}:{bound}"
        if fresh:
            reset_moto(url)
        yield url
    finally:
        server.stop()
        requests_log.setLevel(level)


def reset_moto(endpoint_url: str) -> None:
    """Empty the moto server at ``endpoint_url`` (and, for an in-process server, every moto
    state of this process): ``POST /moto-api/reset``."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint_url.rstrip('/')}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _aws_region(profile: str | None, region: str | None) -> str:
    """The region for the aws backend: given, else the profile's, else the environment's."""
    if region:
        return region
    import boto3

    return boto3.Session(profile_name=profile).region_name or os.environ.get(
        "AWS_DEFAULT_REGION", DEFAULT_REGION
    )


@contextmanager
def open_backend(
    backend: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> Iterator[CloudContext]:
    """A :class:`CloudContext` for ``backend`` for the time of the ``with`` block.

    ``moto`` without ``endpoint_url`` starts a moto server on 127.0.0.1 (ephemeral port) and
    stops it at the end of the block; ``aws`` uses ``profile`` (or the default credential
    chain) and ``region`` (or the profile's); ``local`` gives a context that refuses AWS calls.
    """
    check_backend(backend)
    if backend == "local":
        yield CloudContext("local", region or DEFAULT_REGION, None, prefix)
    elif backend == "aws":
        yield CloudContext("aws", _aws_region(profile, region), endpoint_url, prefix, profile)
    elif endpoint_url:
        yield CloudContext("moto", region or DEFAULT_REGION, endpoint_url, prefix)
    else:
        with moto_server() as url:
            yield CloudContext("moto", region or DEFAULT_REGION, url, prefix)
