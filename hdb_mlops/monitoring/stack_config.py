"""Rendering the committed monitoring configuration (``prometheus/``) for one run.

The files under ``prometheus/`` are the one source of truth, in real-time values: scrape the
service at 127.0.0.1:8080, the retrainer at 127.0.0.1:9095, alert to 127.0.0.1:9093. A run
renders them with pyyaml into a work folder with its own targets, ports and paths, and with
``speed`` N every duration divided by N (floor 1 s) so that a scenario runs N times faster
than real time:

* Prometheus: scrape and evaluation intervals, scrape timeouts, rule groups' ``interval``,
  rules' ``for``, and every range window (``[5m]``, subqueries, ``offset``) inside every
  rule's PromQL. A range window never shrinks below four scrape intervals (Grafana's
  ``$__rate_interval`` rule), or ``rate()`` would find fewer than two samples in it;
* Alertmanager: ``resolve_timeout`` and every route's group_wait, group_interval and
  repeat_interval;
* Prometheus' own timing flags (:func:`prometheus_flags`): alert resend delay, the ``for``
  grace period and outage tolerance, the query lookback.

:func:`render_compose` writes the docker-compose variant (``prometheus/docker/``) from the
same files, with the compose service names as targets.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from hdb_mlops.config import PROJECT_DIR

#: The committed configuration (a checkout's ``prometheus/`` folder).
CONFIG_DIR = PROJECT_DIR / "prometheus"
PROMETHEUS_FILE = "prometheus.yml"
ALERTMANAGER_FILE = "alertmanager.yml"
COMPOSE_DIR = "docker"
#: Scrape job names in prometheus.yml (the targets :func:`render_prometheus` replaces).
API_JOB, RETRAINER_JOB, PROMETHEUS_JOB = "hdb-api", "hdb-retrainer", "prometheus"
#: Where the compose services listen (docker-compose.yml's service names and ports).
COMPOSE_TARGETS = {
    API_JOB: "http://api:8080",
    RETRAINER_JOB: "http://retrainer:9095",
    PROMETHEUS_JOB: "http://localhost:9090",
    "alertmanager": "alertmanager:9093",
}
#: Prometheus' timing flags and their defaults (scaled with the configuration).
PROMETHEUS_TIMING_FLAGS = {
    "--rules.alert.resend-delay": "1m",
    "--rules.alert.for-grace-period": "10m",
    "--rules.alert.for-outage-tolerance": "1h",
    "--query.lookback-delta": "5m",
}
HEADER = "# Rendered by hdb-mlops from {source}: do not edit, edit the source and render again.\n"

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION_RE = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")
_PART_RE = re.compile(r"(\d+)(ms|[smhdwy])")
#: A PromQL string literal (skipped), a range/subquery window, or an offset.
_PROMQL_RE = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)"""
    r"|\[(?P<range>[0-9a-z]+)(?::(?P<step>[0-9a-z]*))?\]"
    r"|(?P<offset>\boffset\s+)(?P<odur>-?[0-9a-z]+)"
)


# ----------------------------------------------------------------------------- durations


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``"1h30m"``, ``"15s"``, ``"500ms"``)."""
    value = str(text).strip()
    if not _DURATION_RE.match(value):
        raise ValueError(f"{text!r} is not a Prometheus duration (e.g. 15s, 5m, 1h30m)")
    return float(sum(int(n) * _UNITS[unit] for n, unit in _PART_RE.findall(value)))


def format_duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds`` (whole seconds, largest units first: ``1m30s``)."""
    total = max(1, math.ceil(seconds - 1e-9))
    parts = []
    for unit in ("d", "h", "m", "s"):
        count, total = divmod(total, int(_UNITS[unit]))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def scale_duration(text: str, speed: float, *, floor: float = 1.0) -> str:
    """``text`` divided by ``speed``, at least ``floor`` seconds; unchanged at speed 1."""
    if speed == 1:
        return str(text)
    return format_duration(max(floor, parse_duration(text) / speed))


def scale_range(text: str, speed: float, min_range: float) -> str:
    """A range window divided by ``speed``, but never under ``min_range`` seconds (nor above
    the window itself)."""
    if speed == 1:
        return text
    seconds = parse_duration(text)
    return format_duration(max(seconds / speed, min(seconds, min_range), 1.0))


def scale_expr(expr: str, speed: float, *, min_range: float = 1.0) -> str:
    """PromQL with every range window, subquery step and offset divided by ``speed``
    (string literals are left alone)."""
    if speed == 1:
        return expr

    def replace(match: re.Match) -> str:
        if match.group("string"):
            return match.group(0)
        if match.group("offset"):
            duration = match.group("odur")
            sign = "-" if duration.startswith("-") else ""
            return match.group("offset") + sign + scale_duration(duration.lstrip("-"), speed)
        window = scale_range(match.group("range"), speed, min_range)
        step = match.group("step")
        if step is None:
            return f"[{window}]"
        return f"[{window}:{scale_duration(step, speed) if step else ''}]"

    return _PROMQL_RE.sub(replace, expr)


# ----------------------------------------------------------------------------- yaml


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (PromQL stays readable in the rendered files)."""


def _str(dumper: Any, value: str) -> Any:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any, source: str | None = None) -> str:
    """``data`` as YAML (keys in their order), with a "rendered from" header."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    return (HEADER.format(source=source) if source else "") + text


def load_yaml(path: Path) -> Any:
    """A YAML file as Python data."""
    return yaml.safe_load(Path(path).read_text())


# ----------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """A scrape target from a URL: scheme, ``host:port`` and the metrics path."""

    scheme: str
    address: str
    metrics_path: str

    @classmethod
    def from_url(cls, url: str) -> Target:
        """``http://host:port[/prefix]`` -> scheme, ``host:port``, ``/prefix/metrics``."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8080)")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        return cls(parts.scheme, f"{host}:{port}", parts.path.rstrip("/") + "/metrics")


def _retarget(job: dict[str, Any], target: Target) -> None:
    job["scheme"] = target.scheme
    job["metrics_path"] = target.metrics_path
    job["static_configs"] = [{"targets": [target.address]}]


def _scale_keys(section: dict[str, Any], keys: tuple[str, ...], scale: Callable) -> None:
    for key in keys:
        if key in section:
            section[key] = scale(section[key])


def scrape_interval(config: dict[str, Any]) -> float:
    """The longest scrape interval of a Prometheus configuration, in seconds."""
    default = config.get("global", {}).get("scrape_interval", "1m")
    intervals = [job.get("scrape_interval", default) for job in config.get("scrape_configs", [])]
    return max(parse_duration(i) for i in [default, *intervals])


# ----------------------------------------------------------------------------- rendering


def render_prometheus(
    config: dict[str, Any],
    *,
    targets: dict[str, str],
    alertmanager: str,
    speed: float = 1.0,
    rule_files: list[str] | None = None,
) -> dict[str, Any]:
    """prometheus.yml for a run: the jobs of ``targets`` (job name -> URL) re-pointed, the
    Alertmanager at ``alertmanager`` (``host:port``), durations divided by ``speed``."""
    out = copy.deepcopy(config)
    scale = lambda d: scale_duration(d, speed)  # noqa: E731
    _scale_keys(out.setdefault("global", {}), ("scrape_interval", "evaluation_interval"), scale)
    jobs = {job["job_name"]: job for job in out.get("scrape_configs", [])}
    missing = set(targets) - set(jobs)
    if missing:
        raise ValueError(f"prometheus.yml has no scrape job {', '.join(sorted(missing))}")
    for name, url in targets.items():
        _retarget(jobs[name], Target.from_url(url))
    for job in jobs.values():
        _scale_keys(job, ("scrape_interval",), scale)
    # a timeout may not exceed its interval: scale, then cap (a job's own interval too)
    glob = out["global"]
    interval = parse_duration(glob.get("scrape_interval", "1m"))
    timeout = parse_duration(scale(glob.get("scrape_timeout", "10s")))
    glob["scrape_timeout"] = format_duration(min(timeout, interval))
    for job in jobs.values():
        job_interval = parse_duration(job.get("scrape_interval", glob["scrape_interval"]))
        if "scrape_timeout" in job:
            job_timeout = parse_duration(scale(job["scrape_timeout"]))
        else:
            job_timeout = parse_duration(glob["scrape_timeout"])
        if "scrape_timeout" in job or job_timeout > job_interval:
            job["scrape_timeout"] = format_duration(min(job_timeout, job_interval))
    out["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    if rule_files is not None:
        out["rule_files"] = rule_files
    return out


def render_rules(rules: dict[str, Any], speed: float, *, min_range: float) -> dict[str, Any]:
    """A rule file with ``for``, group intervals and every expression's windows divided by
    ``speed`` (windows at least ``min_range`` seconds)."""
    out = copy.deepcopy(rules)
    for group in out.get("groups", []):
        _scale_keys(group, ("interval",), lambda d: scale_duration(d, speed))
        for rule in group.get("rules", []):
            rule["expr"] = scale_expr(str(rule["expr"]), speed, min_range=min_range)
            _scale_keys(rule, ("for", "keep_firing_for"), lambda d: scale_duration(d, speed))
    return out


def render_alertmanager(
    config: dict[str, Any], *, retrainer_url: str | None = None, speed: float = 1.0
) -> dict[str, Any]:
    """alertmanager.yml for a run: webhooks to the committed retrainer address re-pointed at
    ``retrainer_url`` (same path), every route's timing divided by ``speed``."""
    out = copy.deepcopy(config)
    scale = lambda d: scale_duration(d, speed)  # noqa: E731
    _scale_keys(out.setdefault("global", {}), ("resolve_timeout",), scale)

    def walk(route: dict[str, Any]) -> None:
        _scale_keys(route, ("group_wait", "group_interval", "repeat_interval"), scale)
        for child in route.get("routes", []):
            walk(child)

    walk(out["route"])
    if retrainer_url:
        base = urlsplit(retrainer_url)
        for receiver in out.get("receivers", []):
            for hook in receiver.get("webhook_configs", []):
                path = urlsplit(hook["url"]).path
                hook["url"] = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{path}"
    return out


def prometheus_flags(speed: float, scrape_seconds: float) -> list[str]:
    """Prometheus' timing flags divided by ``speed`` (the lookback at least four scrapes)."""
    flags = []
    for flag, default in PROMETHEUS_TIMING_FLAGS.items():
        if flag == "--query.lookback-delta":
            value = scale_range(default, speed, 4 * scrape_seconds)
        else:
            value = scale_duration(default, speed)
        flags.append(f"{flag}={value}")
    return flags


@dataclass(frozen=True)
class RenderedConfig:
    """The files one run of the stack reads (all inside ``workdir``)."""

    workdir: Path
    prometheus_config: Path
    alertmanager_config: Path
    rule_files: tuple[Path, ...]
    speed: float
    scrape_seconds: float


def render_local(
    workdir: Path,
    *,
    api_url: str,
    retrainer_url: str,
    prometheus_port: int,
    alertmanager_port: int,
    speed: float = 1.0,
    config_dir: Path = CONFIG_DIR,
) -> RenderedConfig:
    """Write prometheus.yml, rules/*.yml and alertmanager.yml for a local run into
    ``workdir``: targets ``api_url`` and ``retrainer_url``, Prometheus and Alertmanager on
    127.0.0.1 at the given ports, durations divided by ``speed``."""
    if not speed > 0 or not math.isfinite(speed):
        raise ValueError(f"speed must be a positive number, not {speed}")
    config_dir = Path(config_dir)
    source = load_yaml(config_dir / PROMETHEUS_FILE)
    targets = {
        API_JOB: api_url,
        RETRAINER_JOB: retrainer_url,
        PROMETHEUS_JOB: f"http://127.0.0.1:{prometheus_port}",
    }
    rule_names = [str(r) for r in source.get("rule_files", [])]
    rendered = render_prometheus(
        source, targets=targets, alertmanager=f"127.0.0.1:{alertmanager_port}", speed=speed
    )
    scrape = scrape_interval(rendered)
    workdir = Path(workdir)
    (workdir / "rules").mkdir(parents=True, exist_ok=True)
    rule_paths = []
    for name in rule_names:
        rules = render_rules(load_yaml(config_dir / name), speed, min_range=4 * scrape)
        path = workdir / "rules" / Path(name).name
        path.write_text(dump_yaml(rules, f"prometheus/{name}"))
        rule_paths.append(path)
    rendered["rule_files"] = [f"rules/{p.name}" for p in rule_paths]
    prometheus_path = workdir / PROMETHEUS_FILE
    prometheus_path.write_text(dump_yaml(rendered, f"prometheus/{PROMETHEUS_FILE}"))
    am = render_alertmanager(
        load_yaml(config_dir / ALERTMANAGER_FILE), retrainer_url=retrainer_url, speed=speed
    )
    am_path = workdir / ALERTMANAGER_FILE
    am_path.write_text(dump_yaml(am, f"prometheus/{ALERTMANAGER_FILE}"))
    return RenderedConfig(workdir, prometheus_path, am_path, tuple(rule_paths), speed, scrape)


def render_compose(config_dir: Path = CONFIG_DIR) -> dict[str, str]:
    """The docker-compose variant of the configuration, ``{file name: text}`` for
    ``prometheus/docker/``: compose service names as targets, rule files from the mounted
    ``rules/`` folder, real-time durations."""
    config_dir = Path(config_dir)
    source = load_yaml(config_dir / PROMETHEUS_FILE)
    targets = {job: url for job, url in COMPOSE_TARGETS.items() if job != "alertmanager"}
    rendered = render_prometheus(
        source,
        targets=targets,
        alertmanager=COMPOSE_TARGETS["alertmanager"],
        rule_files=[f"../{name}" for name in source.get("rule_files", [])],
    )
    am = render_alertmanager(
        load_yaml(config_dir / ALERTMANAGER_FILE), retrainer_url=COMPOSE_TARGETS[RETRAINER_JOB]
    )
    return {
        PROMETHEUS_FILE: dump_yaml(rendered, f"prometheus/{PROMETHEUS_FILE}"),
        ALERTMANAGER_FILE: dump_yaml(am, f"prometheus/{ALERTMANAGER_FILE}"),
    }


def write_compose(config_dir: Path = CONFIG_DIR) -> list[Path]:
    """Write :func:`render_compose` into ``config_dir/docker/``; returns the files written."""
    out_dir = Path(config_dir) / COMPOSE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_compose(config_dir).items():
        (out_dir / name).write_text(text)
        written.append(out_dir / name)
    return written


def stale_compose_files(config_dir: Path = CONFIG_DIR) -> list[Path]:
    """The files of ``config_dir/docker/`` that differ from :func:`render_compose`."""
    out_dir = Path(config_dir) / COMPOSE_DIR
    return [
        out_dir / name
        for name, text in render_compose(config_dir).items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text() != text
    ]
