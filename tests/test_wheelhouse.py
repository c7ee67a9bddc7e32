"""scripts/wheelhouse.sh: the refusals (fast), and its checkov half for real (slow).

The slow test builds ``DIR/checkov/`` from the package index (``build-checkov``), then makes
chapter 4's checkov tool environment from it alone (``install-checkov``, which runs
:func:`hdb_mlops.cloud.lint.ensure_checkov` with the index and the network turned off), in a
network namespace with only loopback where ``unshare -n`` works, and with an empty uv cache.
The course half (``build`` / ``install`` of the whole lock, 400 MB and minutes) is not run
here; docs/trainer-guide.md section 2 has its measurements.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hdb_mlops import config
from hdb_mlops.cloud import lint

SCRIPT = config.PROJECT_DIR / "scripts" / "wheelhouse.sh"
LOCK = config.PROJECT_DIR / "requirements.lock"
#: The checkov version infra/checkov-requirements.txt pins.
PINNED = re.search(r"^checkov==(\S+)$", lint.REQUIREMENTS.read_text(), re.MULTILINE).group(1)
#: The course venv, whose ensure_checkov() (and uv) install-checkov runs.
VENV = Path(sys.prefix)


def script(
    *args: str, env: dict[str, str] | None = None, offline: bool = False, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run the script (inside ``unshare -n`` when ``offline`` and unshare works)."""
    prefix = ["unshare", "-n"] if offline and _unshare_works() else []
    return subprocess.run(
        [*prefix, "bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def _unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def fake_wheelhouse(root: Path, checkov_requirements: str | None) -> Path:
    """A wheelhouse with this lock and no wheels; ``checkov/`` with the given requirements."""
    root.mkdir()
    shutil.copy(LOCK, root / "requirements.lock")
    if checkov_requirements is not None:
        (root / "checkov").mkdir()
        (root / "checkov" / "checkov-requirements.txt").write_text(checkov_requirements)
    return root


# ----------------------------------------------------------------------------- refusals


def test_install_refuses_a_wheelhouse_without_checkov(tmp_path: Path) -> None:
    wheelhouse = fake_wheelhouse(tmp_path / "wh", None)
    result = script("install", str(wheelhouse), str(tmp_path / "venv"))
    assert result.returncode == 1
    assert "has no checkov/ folder" in result.stderr
    assert "build-checkov" in result.stderr
    assert not (tmp_path / "venv").exists()  # refused before the long part


def test_install_refuses_another_checkov_requirements(tmp_path: Path) -> None:
    wheelhouse = fake_wheelhouse(tmp_path / "wh", "checkov==3.0.0\n")
    for args in (
        ["install", str(wheelhouse), str(tmp_path / "venv")],
        ["install-checkov", str(wheelhouse), str(tmp_path / "env"), str(VENV)],
    ):
        result = script(*args)
        assert result.returncode == 1, args
        assert "built from another infra/checkov-requirements.txt" in result.stderr, args
    assert not (tmp_path / "venv").exists()
    assert not (tmp_path / "env").exists()


def test_install_still_refuses_another_lock(tmp_path: Path) -> None:
    wheelhouse = fake_wheelhouse(tmp_path / "wh", lint.REQUIREMENTS.read_text())
    (wheelhouse / "requirements.lock").write_text("six==1.17.0\n")
    result = script("install", str(wheelhouse), str(tmp_path / "venv"))
    assert result.returncode == 1
    assert "built from another requirements.lock" in result.stderr


# ----------------------------------------------------------------------------- for real


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """tmp_path, emptied afterwards (the tool environment is about 270 MB)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_checkov_tool_env_from_the_wheelhouse_offline(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not _pypi_reachable():
        pytest.skip("pypi.org:443 unreachable in 5 s: build-checkov needs the package index")
    wheelhouse, env_dir = work / "wh", work / ".venv-checkov"

    built = script("build-checkov", str(wheelhouse))
    assert built.returncode == 0, built.stderr[-2000:]
    folder = wheelhouse / "checkov"
    wheels = sorted(p.name for p in folder.glob("*.whl"))
    assert any(name.startswith(f"checkov-{PINNED}-") for name in wheels)
    assert (folder / "checkov-requirements.txt").read_bytes() == lint.REQUIREMENTS.read_bytes()
    sums = (folder / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split()[1] for line in sums) == wheels

    # offline: no network (a loopback-only namespace where unshare works), no index, and an
    # empty uv cache, so that this machine's cache plays no part
    offline = {"UV_CACHE_DIR": str(work / "uv-cache")}
    made = script(
        "install-checkov", str(wheelhouse), str(env_dir), str(VENV), env=offline, offline=True
    )
    assert made.returncode == 0, made.stderr[-2000:]
    assert f"{env_dir}/ ready" in made.stdout

    version = subprocess.run(
        [str(env_dir / "bin" / "checkov"), "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, **lint.OFFLINE_ENV},
        timeout=120,
        check=False,
    )
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.strip() == PINNED

    # a second offline call takes the environment as it is: it would delete this file
    sentinel = env_dir / "kept"
    sentinel.write_text("")
    again = script(
        "install-checkov", str(wheelhouse), str(env_dir), str(VENV), env=offline, offline=True
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert sentinel.exists()
    # and so does chapter 4's lint: ensure_checkov() calls neither venv nor uv nor pip
    monkeypatch.setattr(lint, "_run", lambda command: pytest.fail(f"rebuilt: {command}"))
    assert lint.ensure_checkov(env_dir) == env_dir / "bin" / "checkov"
    assert sentinel.exists()
