"""The monitoring stack's binaries (Debian's ``prometheus`` and ``prometheus-alertmanager``
packages) and the checks their tools run: ``promtool check config`` / ``check rules`` /
``test rules`` / ``check metrics``, ``amtool check-config`` / ``config routes test``.

Every check returns a :class:`CheckResult` (the command, whether it passed, its output) so
that the CLI can print them all and a test can assert on each; a binary that is not installed
raises :class:`MissingBinaryError` with the command that installs it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hdb_mlops.config import PROJECT_DIR
from hdb_mlops.monitoring.stack_config import (
    ALERTMANAGER_FILE,
    COMPOSE_DIR,
    CONFIG_DIR,
    PROMETHEUS_FILE,
    RenderedConfig,
    stale_compose_files,
)

INSTALL_HINT = "sudo apt-get install prometheus prometheus-alertmanager"
#: The names a tool's binary goes by (Debian calls Alertmanager prometheus-alertmanager).
BINARIES = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "amtool": ("amtool",),
}
TOOL_TIMEOUT_S = 120


class MissingBinaryError(RuntimeError):
    """A monitoring binary is not installed (the message names the install command)."""


def find_binary(tool: str) -> str:
    """The path of ``tool`` (a key of :data:`BINARIES`) on ``$PATH``; raises
    :class:`MissingBinaryError` when it is not installed."""
    for name in BINARIES[tool]:
        path = shutil.which(name)
        if path:
            return path
    missing = [t for t in BINARIES if not any(shutil.which(n) for n in BINARIES[t])]
    raise MissingBinaryError(
        f"{', '.join(missing)} not found on PATH: install with `{INSTALL_HINT}`"
    )


def require_binaries(*tools: str) -> dict[str, str]:
    """The paths of ``tools`` (all of :data:`BINARIES` by default), or one
    :class:`MissingBinaryError` naming every missing one."""
    return {tool: find_binary(tool) for tool in tools or tuple(BINARIES)}


@dataclass(frozen=True)
class CheckResult:
    """One tool run: what was checked, the command, whether it passed, what it printed."""

    name: str
    command: tuple[str, ...]
    ok: bool
    output: str

    def to_dict(self) -> dict[str, object]:
        """The result as JSON-ready data."""
        return {
            "name": self.name,
            "command": list(self.command),
            "ok": self.ok,
            "output": self.output,
        }


def run_tool(name: str, command: list[str], *, stdin: str | None = None) -> CheckResult:
    """Run ``command`` (its first word a key of :data:`BINARIES`) and collect the result."""
    argv = [find_binary(command[0]), *command[1:]]
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return CheckResult(name, tuple(argv), False, f"timed out after {TOOL_TIMEOUT_S} s")
    output = (done.stdout + done.stderr).strip()
    return CheckResult(name, tuple(argv), done.returncode == 0, output)


def _shown(paths: list[Path]) -> str:
    """Paths as a reader finds them: relative to the checkout when inside it."""
    shown = []
    for path in paths:
        try:
            shown.append(str(Path(path).resolve().relative_to(PROJECT_DIR)))
        except ValueError:
            shown.append(str(path))
    return " ".join(shown)


def check_prometheus_config(path: Path) -> CheckResult:
    """``promtool check config`` (the configuration and the rule files it names)."""
    return run_tool(
        f"promtool check config {_shown([path])}", ["promtool", "check", "config", str(path)]
    )


def check_rules(paths: list[Path]) -> CheckResult:
    """``promtool check rules`` on rule files."""
    return run_tool(
        f"promtool check rules {_shown(paths)}", ["promtool", "check", "rules", *map(str, paths)]
    )


def run_rule_tests(paths: list[Path]) -> CheckResult:
    """``promtool test rules`` on rule unit-test files."""
    return run_tool(
        f"promtool test rules {_shown(paths)}", ["promtool", "test", "rules", *map(str, paths)]
    )


def check_alertmanager_config(path: Path) -> CheckResult:
    """``amtool check-config``."""
    return run_tool(f"amtool check-config {_shown([path])}", ["amtool", "check-config", str(path)])


def check_metrics(text: str) -> CheckResult:
    """``promtool check metrics`` on a Prometheus text exposition (a scrape of /metrics)."""
    return run_tool("promtool check metrics", ["promtool", "check", "metrics"], stdin=text)


def route_receivers(config: Path, labels: dict[str, str]) -> list[str]:
    """The receivers Alertmanager's routing tree in ``config`` sends an alert with ``labels``
    to (``amtool config routes test``)."""
    pairs = [f"{key}={value}" for key, value in labels.items()]
    result = run_tool(
        "amtool config routes test",
        ["amtool", "config", "routes", "test", f"--config.file={config}", *pairs],
    )
    lines = [
        line.strip()
        for line in result.output.splitlines()
        if line.strip() and not line.startswith("Warning:")
    ]
    if not result.ok or not lines:
        raise RuntimeError(f"amtool config routes test failed: {result.output}")
    return [name.strip() for name in lines[-1].split(",")]


def _compose_check(config_dir: Path) -> CheckResult:
    stale = stale_compose_files(config_dir)
    output = (
        "the docker-compose variant is current"
        if not stale
        else f"out of date: {', '.join(map(str, stale))}: run `hdb-mlops monitor render --compose`"
    )
    name = f"{_shown([config_dir / COMPOSE_DIR])}/ is rendered from the current sources"
    return CheckResult(name, (), not stale, output)


def check_committed(config_dir: Path = CONFIG_DIR) -> list[CheckResult]:
    """Every check of the committed configuration: promtool check config and check rules,
    promtool test rules on ``tests/*.yml``, amtool check-config, for the files and their
    docker-compose variant (which must also be current)."""
    config_dir = Path(config_dir)
    require_binaries("promtool", "amtool")
    rules = sorted((config_dir / "rules").glob("*.yml"))
    tests = sorted((config_dir / "tests").glob("*.yml"))
    if not rules or not tests:
        raise FileNotFoundError(f"no rules/*.yml or tests/*.yml under {config_dir}")
    results = [
        check_prometheus_config(config_dir / PROMETHEUS_FILE),
        check_rules(rules),
        run_rule_tests(tests),
        check_alertmanager_config(config_dir / ALERTMANAGER_FILE),
    ]
    docker = config_dir / COMPOSE_DIR
    if (docker / PROMETHEUS_FILE).is_file():
        results.append(check_prometheus_config(docker / PROMETHEUS_FILE))
    if (docker / ALERTMANAGER_FILE).is_file():
        results.append(check_alertmanager_config(docker / ALERTMANAGER_FILE))
    results.append(_compose_check(config_dir))
    return results


def check_rendered(rendered: RenderedConfig) -> list[CheckResult]:
    """promtool check config (with its rules) and amtool check-config on a run's files."""
    return [
        check_prometheus_config(rendered.prometheus_config),
        check_alertmanager_config(rendered.alertmanager_config),
    ]
