"""Promotion of ONE artifact between environments, by its sha256 digest (chapter 5F).

The build produces ``model.tar.gz`` once. Promotion never rebuilds: it copies the same bytes

    built file --> dev --> uat --> prod

and checks at every hop that they still hash to the digest. ``uat`` takes only a digest that
is in ``dev``, ``prod`` only one that is in ``uat``; anything else is refused. Each
environment has a store (on moto or aws an S3 bucket: the ``ArtifactBucketName`` of the Stage 2
stack deployed with the prefix ``<prefix>-<env>``, where there is one, else
``<prefix>-<env>-artifacts``; a folder on the local backend) laid out as::

    artifacts/sha256/<digest>/model.tar.gz     every artifact that was promoted here
    manifest.json                              what the environment runs now
    manifests/<UTC time>-<digest[:12]>.json    one record per promotion (the history)

A manifest records the environment, the digest, the artifact's key and size, where it came
from (the build file, or the previous environment), the digest it replaced, and when.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from hdb_mlops import config
from hdb_mlops.cloud.backends import CloudContext

ENVIRONMENTS = ("dev", "uat", "prod")
#: Where each environment takes its artifact from.
PREVIOUS = {"uat": "dev", "prod": "uat"}
ARTIFACT_NAME = "model.tar.gz"
MANIFEST = "manifest.json"


class PromotionError(RuntimeError):
    """A promotion that is refused (digest not in the previous environment, bytes that do
    not hash to the digest, an unknown environment)."""


def sha256_of(path: Path | str) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def artifact_key(digest: str) -> str:
    """The key of an artifact in an environment's store."""
    return f"artifacts/sha256/{digest}/{ARTIFACT_NAME}"


def check_digest(text: str) -> str:
    """``text`` if it is a hex sha256 (64 hex digits, lower-cased)."""
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PromotionError(f"{text!r} is not a sha256 digest (64 hex digits)")
    return value


class Store(Protocol):
    """Where the environments' artifacts and manifests live."""

    def location(self, env: str, key: str = "") -> str:
        """A URI or path naming ``key`` in ``env``."""

    def exists(self, env: str, key: str) -> bool:
        """Whether ``key`` is in ``env``."""

    def upload(self, env: str, key: str, path: Path) -> None:
        """Put a local file at ``key``."""

    def download(self, env: str, key: str, path: Path) -> None:
        """Get ``key`` into a local file."""

    def copy(self, source_env: str, env: str, key: str) -> None:
        """Copy ``key`` from ``source_env`` to ``env``."""

    def read(self, env: str, key: str) -> bytes | None:
        """The bytes at ``key``, or None."""

    def write(self, env: str, key: str, data: bytes) -> None:
        """Put bytes at ``key``."""


class FolderStore:
    """The local backend's store: ``<root>/<prefix>-<env>/<key>``."""

    def __init__(self, root: Path | str, prefix: str = "hdb-mlops") -> None:
        self.root = Path(root)
        self.prefix = prefix

    def _path(self, env: str, key: str = "") -> Path:
        return self.root / f"{self.prefix}-{env}" / key

    def location(self, env: str, key: str = "") -> str:
        """The path of ``key`` in ``env``."""
        return str(self._path(env, key))

    def exists(self, env: str, key: str) -> bool:
        """Whether the file exists."""
        return self._path(env, key).is_file()

    def upload(self, env: str, key: str, path: Path) -> None:
        """Copy a file in (written beside, then renamed: never half a file)."""
        target = self._path(env, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(path, partial)
        partial.replace(target)

    def download(self, env: str, key: str, path: Path) -> None:
        """Copy a file out."""
        shutil.copyfile(self._path(env, key), path)

    def copy(self, source_env: str, env: str, key: str) -> None:
        """Copy between two environments' folders."""
        self.upload(env, key, self._path(source_env, key))

    def read(self, env: str, key: str) -> bytes | None:
        """The file's bytes, or None."""
        path = self._path(env, key)
        return path.read_bytes() if path.is_file() else None

    def write(self, env: str, key: str, data: bytes) -> None:
        """Write a file (via a temporary sibling)."""
        target = self._path(env, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        partial.write_bytes(data)
        partial.replace(target)


class S3Store:
    """The moto / aws backends' store: one bucket per environment."""

    def __init__(self, ctx: CloudContext, buckets: dict[str, str] | None = None) -> None:
        self.ctx = ctx
        self.s3 = ctx.client("s3")
        self.buckets = dict(buckets or {})
        self._ready: set[str] = set()

    def bucket(self, env: str) -> str:
        """The environment's bucket name: as given, else the artifact bucket of the Stage 2
        stack of ``<prefix>-<env>`` (chapter 4), else ``<prefix>-<env>-artifacts``."""
        if env not in self.buckets:
            prefix = f"{self.ctx.prefix}-{env}"
            self.buckets[env] = _stack_artifact_bucket(self.ctx, prefix) or f"{prefix}-artifacts"
        return self.buckets[env]

    def _ensure(self, env: str) -> str:
        from hdb_mlops.cloud.sagemaker.execution import ensure_bucket

        bucket = self.bucket(env)
        if bucket not in self._ready:
            ensure_bucket(self.ctx, bucket)
            self._ready.add(bucket)
        return bucket

    def location(self, env: str, key: str = "") -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket(env)}/{key}"

    def exists(self, env: str, key: str) -> bool:
        """Whether the object exists (a missing bucket counts as missing)."""
        try:
            self.s3.head_object(Bucket=self.bucket(env), Key=key)
            return True
        except Exception as exc:
            code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
                return False
            raise

    def upload(self, env: str, key: str, path: Path) -> None:
        """Upload a file."""
        self.s3.upload_file(str(path), self._ensure(env), key)

    def download(self, env: str, key: str, path: Path) -> None:
        """Download an object."""
        self.s3.download_file(self.bucket(env), key, str(path))

    def copy(self, source_env: str, env: str, key: str) -> None:
        """A server-side copy between the two buckets."""
        source = {"Bucket": self.bucket(source_env), "Key": key}
        self.s3.copy_object(Bucket=self._ensure(env), Key=key, CopySource=source)

    def read(self, env: str, key: str) -> bytes | None:
        """The object's bytes, or None."""
        if not self.exists(env, key):
            return None
        return bytes(self.s3.get_object(Bucket=self.bucket(env), Key=key)["Body"].read())

    def write(self, env: str, key: str, data: bytes) -> None:
        """Put bytes."""
        self.s3.put_object(Bucket=self._ensure(env), Key=key, Body=data)


def _stack_artifact_bucket(ctx: CloudContext, prefix: str) -> str | None:
    """The ``ArtifactBucketName`` output of the Stage 2 stack of ``prefix``; None when no such
    stack exists (or it has no such output)."""
    from hdb_mlops.cloud.infra import stack_name

    try:
        [stack] = ctx.client("cloudformation").describe_stacks(StackName=stack_name(prefix))[
            "Stacks"
        ]
    except Exception as exc:  # botocore's ClientError: "Stack with id ... does not exist"
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        if code == "ValidationError":
            return None
        raise
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return outputs.get("ArtifactBucketName")


def store_for(
    ctx: CloudContext, root: Path | str | None = None, buckets: dict[str, str] | None = None
) -> Store:
    """The store of ``ctx``'s backend (local: a folder under ``root``, by default
    ``runs/environments``)."""
    if ctx.backend == "local":
        return FolderStore(root or config.RUNS_DIR / "environments", ctx.prefix)
    return S3Store(ctx, buckets)


def _check_env(env: str) -> str:
    if env not in ENVIRONMENTS:
        raise PromotionError(f"unknown environment {env!r}: use one of {', '.join(ENVIRONMENTS)}")
    return env


def manifest(store: Store, env: str) -> dict[str, Any] | None:
    """What ``env`` runs now (its manifest), or None when nothing was promoted there."""
    data = store.read(_check_env(env), MANIFEST)
    return json.loads(data) if data else None


def status(store: Store) -> dict[str, dict[str, Any] | None]:
    """Every environment's manifest."""
    return {env: manifest(store, env) for env in ENVIRONMENTS}


def verify(store: Store, env: str, digest: str) -> int:
    """Download ``digest``'s artifact from ``env`` and check its sha256; return its size.
    Raises PromotionError when it is missing or its bytes do not match."""
    key = artifact_key(digest)
    if not store.exists(env, key):
        raise PromotionError(f"artifact {digest[:12]} is not in {env} ({store.location(env, key)})")
    with tempfile.TemporaryDirectory(prefix="hdb-verify-") as work:
        local = Path(work) / ARTIFACT_NAME
        store.download(env, key, local)
        actual = sha256_of(local)
        if actual != digest:
            raise PromotionError(
                f"{store.location(env, key)} has sha256 {actual}, not {digest}: refusing it"
            )
        return local.stat().st_size


def fetch(store: Store, env: str, dest: Path | str, digest: str | None = None) -> Path:
    """Download ``env``'s current artifact (or ``digest``'s) to ``dest``, verified."""
    chosen = digest or (manifest(store, env) or {}).get("digest")
    if not chosen:
        raise PromotionError(f"nothing has been promoted to {env} yet")
    verify(store, env, chosen)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    store.download(env, artifact_key(chosen), dest)
    if sha256_of(dest) != chosen:
        raise PromotionError(f"{dest} changed while downloading: its sha256 is not {chosen}")
    return dest


@dataclass
class Promotion:
    """The outcome of one promotion."""

    environment: str
    digest: str
    location: str
    manifest: dict[str, Any]
    unchanged: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dict(self.__dict__)


def _record(store: Store, env: str, entry: dict[str, Any]) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    body = (json.dumps(entry, indent=2, sort_keys=True) + "\n").encode()
    store.write(env, f"manifests/{stamp}-{entry['digest'][:12]}.json", body)
    store.write(env, MANIFEST, body)


def promote(
    ctx: CloudContext,
    artifact: Path | str | None,
    to: str,
    *,
    digest: str | None = None,
    root: Path | str | None = None,
    buckets: dict[str, str] | None = None,
    note: str = "",
) -> Promotion:
    """Promote ``artifact`` (a built file, or None to go by ``digest``) to ``to`` in the
    store of ``ctx``'s backend (:func:`store_for`); see :func:`promote_in`."""
    store = store_for(ctx, root, buckets)
    return promote_in(store, to, artifact=artifact, digest=digest, note=note)


def promote_in(
    store: Store,
    to: str,
    *,
    artifact: Path | str | None = None,
    digest: str | None = None,
    note: str = "",
) -> Promotion:
    """Promote one artifact to ``to`` in ``store``.

    ``dev`` takes a built file (``artifact``; a ``digest``, when given, must be its sha256).
    ``uat`` and ``prod`` take the artifact of ``digest`` (or of the file ``artifact``) from
    the previous environment; without either, the previous environment's current one.
    """
    _check_env(to)
    source_env = PREVIOUS.get(to)
    wanted = check_digest(digest) if digest else None
    if artifact is not None:
        path = Path(artifact)
        if not path.is_file():
            raise PromotionError(f"{path}: no such artifact file")
        actual = sha256_of(path)
        if wanted and wanted != actual:
            raise PromotionError(f"{path} has sha256 {actual}, not the digest given ({wanted})")
        wanted = actual
    if source_env is None and artifact is None:
        raise PromotionError("dev takes the built artifact: give its file (--artifact PATH)")
    if source_env is not None:
        wanted = wanted or (manifest(store, source_env) or {}).get("digest")
        if not wanted:
            raise PromotionError(f"nothing has been promoted to {source_env} yet")
        if not store.exists(source_env, artifact_key(wanted)):
            raise PromotionError(
                f"artifact {wanted[:12]} is not in {source_env}: promote it there first "
                f"({to} takes only what {source_env} has)"
            )
        verify(store, source_env, wanted)
    assert wanted is not None
    current = manifest(store, to)
    key = artifact_key(wanted)
    if source_env is None:
        store.upload(to, key, Path(artifact))  # type: ignore[arg-type]
    elif not store.exists(to, key):
        store.copy(source_env, to, key)
    size = verify(store, to, wanted)
    unchanged = bool(current and current.get("digest") == wanted)
    entry = {
        "environment": to,
        "digest": wanted,
        "artifact": key,
        "location": store.location(to, key),
        "bytes": size,
        "source": {"environment": source_env}
        if source_env
        else {"build": str(Path(artifact).resolve())},  # type: ignore[arg-type]
        "previous_digest": current.get("digest") if current else None,
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": config.git_commit(),
        "note": note,
    }
    _record(store, to, entry)
    return Promotion(to, wanted, entry["location"], entry, unchanged)
