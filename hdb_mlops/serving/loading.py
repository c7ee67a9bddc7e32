"""Resolve a model reference (bundle directory, registry version or alias) and load the
verified bundle: nothing is unpickled before every file's sha256 has been checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdb_mlops.model.bundle import (
    METADATA_FILE,
    SPEC_FILE,
    Bundle,
    IntegrityError,
    load_bundle,
    read_metadata,
    sha256_bytes,
    sha256_file,
)
from hdb_mlops.model.features import FeatureSpec

log = logging.getLogger(__name__)


MODEL_ENV = "HDB_MLOPS_MODEL"
MODEL_NAME_ENV = "HDB_MLOPS_MODEL_NAME"


DEFAULT_ALIAS = "champion"
_ALIAS_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class ModelLoadError(RuntimeError):
    """The model could not be resolved, verified or loaded: the service must not start."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model reference: where the bundle comes from and its feature spec.

    ``kind`` is ``"path"`` (a bundle directory) or ``"registry"`` (a registered version,
    pinned to its number at resolution). ``expected_sha256`` is the bundle identity (sha256
    of metadata.json) seen at resolution; loading checks it again.
    """

    kind: str
    ref: str
    spec: FeatureSpec
    expected_sha256: str
    path: Path | None = None
    registry_name: str | None = None
    version: int | None = None

    def describe(self) -> str:
        """Human-readable origin, for messages."""
        if self.kind == "path":
            return f"bundle directory {self.path}"
        return f"registry model {self.registry_name!r} version {self.version} (ref {self.ref!r})"


def _spec_from_metadata(spec_bytes: bytes, metadata: dict[str, Any], where: str) -> FeatureSpec:
    expected = (metadata.get("files") or {}).get(SPEC_FILE)
    actual = sha256_bytes(spec_bytes)
    if expected != actual:
        raise IntegrityError(SPEC_FILE, expected, actual, where)
    return FeatureSpec.from_dict(json.loads(spec_bytes))


def _looks_like_path(ref: str) -> bool:
    return Path(ref).expanduser().is_dir() or not _ALIAS_RE.match(ref)


def resolve_model_ref(
    model_ref: str | Path | int | None = None, *, registry_name: str | None = None
) -> ModelSource:
    """Resolve a model reference without unpickling anything.

    ``model_ref`` is a bundle directory (a :class:`~pathlib.Path`, an existing directory or
    any string that is not a plain name), a registry version number (``3`` or ``"3"``) or a
    registry alias (``"champion"``); ``None`` means ``$HDB_MLOPS_MODEL``, else ``champion``.
    The bundle's metadata digest and feature spec hash are checked. Raises
    :class:`ModelLoadError` with the reason.
    """
    if model_ref is None or (isinstance(model_ref, str) and not model_ref.strip()):
        model_ref = os.environ.get(MODEL_ENV, "").strip() or DEFAULT_ALIAS
    registry_name = registry_name or os.environ.get(MODEL_NAME_ENV) or None
    try:
        if isinstance(model_ref, Path) or (
            isinstance(model_ref, str) and not model_ref.isdigit() and _looks_like_path(model_ref)
        ):
            return _resolve_path(Path(model_ref).expanduser())
        return _resolve_registry(model_ref, registry_name)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot resolve model {str(model_ref)!r}: {_reason(exc)}") from exc


def _reason(exc: Exception) -> str:
    """Why resolution failed, for the message. A registry lookup that finds nothing says
    what is missing and what to do, serving a bundle directory included."""
    from hdb_mlops.model.registry import LIST_HINT, RegistryError

    if not isinstance(exc, RegistryError):
        return str(exc)
    hints = [exc.hint] if exc.hint else []
    if exc.hint != LIST_HINT:
        hints.append(f"serve a bundle directory with --model PATH (or ${MODEL_ENV})")
    return f"{exc.problem}; {', or '.join(hints)}" if hints else exc.problem


def _resolve_path(path: Path) -> ModelSource:
    path = path.resolve()
    if not path.is_dir():
        raise ModelLoadError(f"no bundle directory at {path}")
    metadata = read_metadata(path)
    spec_file = path / SPEC_FILE
    if not spec_file.is_file():
        raise IntegrityError(SPEC_FILE, (metadata.get("files") or {}).get(SPEC_FILE), None)
    spec = _spec_from_metadata(spec_file.read_bytes(), metadata, str(path))
    return ModelSource(
        kind="path",
        ref=str(path),
        spec=spec,
        expected_sha256=sha256_file(path / METADATA_FILE),
        path=path,
    )


def _resolve_registry(ref: str | int, registry_name: str | None) -> ModelSource:
    import tempfile

    from hdb_mlops.model import registry, tracking

    name = registry_name or registry.DEFAULT_NAME
    shown = registry.show(ref, name=name)  # metadata.json downloaded and checked
    version = int(shown["version"])
    expected = (shown.get("tags") or {}).get("bundle_sha256")
    if not expected:
        raise ModelLoadError(f"registry model {name!r} version {version} has no bundle_sha256 tag")
    import mlflow  # imported (offline) by registry.show

    with tempfile.TemporaryDirectory() as tmp:  # the spec from the version's bundle directory
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{shown['bundle_uri'].rstrip('/')}/{SPEC_FILE}",
            dst_path=tmp,
            tracking_uri=tracking.tracking_uri(),
        )
        spec_bytes = Path(local).read_bytes()
    where = f"registry model {name!r} version {version}"
    spec = _spec_from_metadata(spec_bytes, shown["metadata"], where)
    return ModelSource(
        kind="registry",
        ref=str(ref),
        spec=spec,
        expected_sha256=expected,
        registry_name=name,
        version=version,
    )


def load_model(source: ModelSource) -> Bundle:
    """Load and verify the bundle of a resolved source (every file's sha256, then unpickle).

    The bundle must still be the one seen at resolution and its feature spec the one the
    request models were built from. Raises :class:`ModelLoadError` naming the problem.
    """
    try:
        if source.kind == "path":
            assert source.path is not None
            bundle = load_bundle(source.path, expected_sha256=source.expected_sha256)
        else:
            from hdb_mlops.model import registry

            bundle = registry.load(source.version, name=source.registry_name)
            if bundle.sha256 != source.expected_sha256:
                raise IntegrityError(
                    METADATA_FILE,
                    source.expected_sha256,
                    bundle.sha256,
                    "not the registered bundle",
                )
    except Exception as exc:
        raise ModelLoadError(f"cannot load {source.describe()}: {exc}") from exc
    if bundle.spec != source.spec:
        raise ModelLoadError(f"{source.describe()}: the feature spec changed while starting up")
    return bundle
