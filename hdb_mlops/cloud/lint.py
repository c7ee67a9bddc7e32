"""Static checks of the Stage 2 template: cfn-lint and checkov, offline.

- **cfn-lint** runs from the course's own environment (moto[server] brings it).
- **checkov** conflicts with the course's lock, so it runs from its own pinned tool
  environment, ``.venv-checkov/``, made on first use from ``infra/checkov-requirements.txt``
  (``uv pip compile`` of checkov==3.3.30 for Python 3.11; PyPI is the only network access,
  once). It runs offline: ``--skip-download`` and ``BC_SKIP_MAPPING=TRUE`` (no guidelines or
  policy metadata from the Prisma Cloud API), ``CKV_SKIP_PACKAGE_UPDATE_CHECK=true`` (no
  version check against PyPI), no API key. It loads the project's own checks from
  ``infra/checks/`` (``--external-checks-dir``): SSE-KMS with a customer key, the TLS-only
  deny, the aws:sourceVpce deny, a policy on every bucket.

Skips are written in the template (``Metadata: checkov: skip: [{id, comment}]``); the
lint fails on a skip without a reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hdb_mlops import config
from hdb_mlops.cloud.template import TEMPLATE

#: The pinned checkov tool environment's requirements.
REQUIREMENTS = config.PROJECT_DIR / "infra" / "checkov-requirements.txt"
#: The project's own checkov checks.
CHECKS_DIR = config.PROJECT_DIR / "infra" / "checks"
#: Where the checkov tool environment is made.
TOOL_ENV = config.PROJECT_DIR / ".venv-checkov"
#: The environment that keeps checkov offline (see the module docstring).
OFFLINE_ENV = {
    "BC_SKIP_MAPPING": "TRUE",
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
    "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false",
    "PYTHONWARNINGS": "ignore",
}
#: The regions cfn-lint checks the template against (Singapore, where the course deploys).
DEFAULT_REGIONS = ("ap-southeast-1",)
_MARKER = "hdb-mlops-requirements.sha256"
#: What checkov writes for a skip without a comment.
_NO_REASON = {"", "no comment provided"}


@dataclass
class CheckovResult:
    """checkov's counts and the failed and skipped checks."""

    version: str
    passed: int
    failed: list[dict[str, str]]
    skipped: list[dict[str, str]]
    parsing_errors: int
    seconds: float

    @property
    def unjustified_skips(self) -> list[dict[str, str]]:
        """The skips without a reason."""
        return [s for s in self.skipped if s["reason"].strip().lower() in _NO_REASON]

    @property
    def ok(self) -> bool:
        """No failure, no parsing error, every skip with a reason."""
        return not self.failed and not self.parsing_errors and not self.unjustified_skips


@dataclass
class CfnLintResult:
    """cfn-lint's matches (errors, warnings and informational)."""

    version: str
    matches: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No match at all."""
        return not self.matches


@dataclass
class LintReport:
    """Both linters' results for one template."""

    template: str
    cfn_lint: CfnLintResult
    checkov: CheckovResult

    @property
    def ok(self) -> bool:
        """Both clean."""
        return self.cfn_lint.ok and self.checkov.ok

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (with each part's ``ok``)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["cfn_lint"]["ok"] = self.cfn_lint.ok
        data["checkov"]["ok"] = self.checkov.ok
        data["checkov"]["unjustified_skips"] = self.checkov.unjustified_skips
        return data


# ----------------------------------------------------------------------------- cfn-lint


def cfn_lint(
    template: Path | str = TEMPLATE, regions: tuple[str, ...] = DEFAULT_REGIONS
) -> CfnLintResult:
    """cfn-lint's errors and warnings for ``template`` in ``regions`` (its default rules,
    as the ``cfn-lint`` command runs them; informational rules are not included)."""
    started = time.monotonic()
    from cfnlint.api import lint as run_cfn_lint
    from cfnlint.version import __version__

    text = Path(template).read_text(encoding="utf-8")
    matches = [
        {"rule": m.rule.id, "line": str(m.linenumber), "message": m.message}
        for m in run_cfn_lint(text, regions=list(regions))
    ]
    return CfnLintResult(__version__, matches, time.monotonic() - started)


# ----------------------------------------------------------------------------- checkov


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two test processes must not build the env at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _uv() -> str | None:
    """The uv next to this Python (the course's venv has it), else on PATH."""
    beside = Path(sys.executable).with_name("uv")
    return str(beside) if beside.exists() else shutil.which("uv")


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(command[:4])} ... failed: {' | '.join(tail)}")


def ensure_checkov(env_dir: Path = TOOL_ENV, requirements: Path = REQUIREMENTS) -> Path:
    """The checkov executable of the tool environment, made first if absent or if the
    requirements changed (``python -m venv``, then ``uv pip install`` or pip)."""
    checkov = env_dir / "bin" / "checkov"
    marker = env_dir / _MARKER
    wanted = _digest(requirements)
    if checkov.exists() and marker.exists() and marker.read_text().strip() == wanted:
        return checkov
    lock = hashlib.sha256(str(env_dir.resolve()).encode()).hexdigest()[:16]
    with _lock(Path(tempfile.gettempdir()) / f"hdb-mlops-checkov-{lock}.lock"):
        if checkov.exists() and marker.exists() and marker.read_text().strip() == wanted:
            return checkov
        shutil.rmtree(env_dir, ignore_errors=True)
        uv = _uv()
        base = getattr(sys, "_base_executable", sys.executable)
        venv = [base, "-m", "venv", str(env_dir)]
        _run([*venv, "--without-pip"] if uv else venv)
        python = str(env_dir / "bin" / "python")
        if uv:
            _run([uv, "pip", "install", "--python", python, "-q", "-r", str(requirements)])
        else:
            _run([python, "-m", "pip", "install", "-q", "-r", str(requirements)])
        marker.write_text(wanted + "\n")
    return checkov


def checkov_command(
    template: Path | str = TEMPLATE,
    checks_dir: Path | None = CHECKS_DIR,
    checkov: Path | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The offline checkov command line for ``template`` and its environment."""
    command = [
        str(checkov or ensure_checkov()),
        "--file",
        str(template),
        "--framework",
        "cloudformation",
        "--skip-download",
        "--compact",
        "--output",
        "json",
    ]
    if checks_dir is not None:
        command += ["--external-checks-dir", str(checks_dir)]
    env = {k: v for k, v in os.environ.items() if k not in ("BC_API_KEY", "PRISMA_API_URL")}
    env.update(OFFLINE_ENV)
    return command, env


def parse_report(stdout: str, seconds: float = 0.0) -> CheckovResult:
    """A :class:`CheckovResult` from checkov's JSON report (one framework: an object;
    several: a list)."""
    data = json.loads(stdout)
    if isinstance(data, list):
        data = next((d for d in data if d.get("check_type") == "cloudformation"), data[0])
    summary = data.get("summary", data)
    results = data.get("results", {})

    def brief(check: dict[str, Any]) -> dict[str, str]:
        return {
            "id": check["check_id"],
            "name": check.get("check_name", ""),
            "resource": check.get("resource", ""),
            "reason": str((check.get("check_result") or {}).get("suppress_comment") or ""),
        }

    return CheckovResult(
        version=str(summary.get("checkov_version", "")),
        passed=int(summary.get("passed", 0)),
        failed=[brief(c) for c in results.get("failed_checks", [])],
        skipped=[brief(c) for c in results.get("skipped_checks", [])],
        parsing_errors=int(summary.get("parsing_errors", 0)),
        seconds=seconds,
    )


def checkov(template: Path | str = TEMPLATE, checks_dir: Path | None = CHECKS_DIR) -> CheckovResult:
    """Run checkov offline on ``template`` with the project's checks."""
    command, env = checkov_command(template, checks_dir)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode not in (0, 1) or not result.stdout.strip():
        tail = " | ".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"checkov failed (exit {result.returncode}): {tail}")
    return parse_report(result.stdout, time.monotonic() - started)


def lint(template: Path | str = TEMPLATE) -> LintReport:
    """cfn-lint and checkov on ``template``."""
    return LintReport(str(template), cfn_lint(template), checkov(template))
