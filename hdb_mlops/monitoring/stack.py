"""A local Prometheus and Alertmanager for chapter 6, from the installed binaries (Debian's
``prometheus`` and ``prometheus-alertmanager``), on 127.0.0.1.

:class:`Stack` renders the committed configuration into a work folder (default
``runs/monitor/``; see :mod:`hdb_mlops.monitoring.stack_config`), checks the rendered files
with promtool and amtool, starts Alertmanager then Prometheus as processes of their own
session (they outlive ``hdb-mlops monitor up``), waits for ``/-/ready`` and writes
``state.json`` so that ``hdb-mlops monitor status|down`` in another process finds them.
The folder holds everything of a run::

    runs/monitor/
      prometheus.yml  rules/*.yml  alertmanager.yml     rendered configuration
      data/prometheus/  data/alertmanager/             their storage
      logs/prometheus.log  logs/alertmanager.log       what they logged
      state.json                                        pids, ports, URLs

In a notebook or a test::

    with Stack(tmp_path) as stack:
        info = stack.start(api_url, retrainer_url, speed=30)
        ...  # query info.prometheus_url
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hdb_mlops.config import RUNS_DIR
from hdb_mlops.monitoring.checks import check_rendered, require_binaries
from hdb_mlops.monitoring.stack_config import CONFIG_DIR, prometheus_flags, render_local

DEFAULT_WORKDIR = RUNS_DIR / "monitor"
DEFAULT_API_URL = "http://127.0.0.1:8080"
DEFAULT_RETRAINER_URL = "http://127.0.0.1:9095"
HOST = "127.0.0.1"
STATE_FILE = "state.json"
#: Start order (stop in reverse): Prometheus' first notifications find Alertmanager up.
COMPONENTS = ("alertmanager", "prometheus")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """The stack could not start (a port taken, a bad rendered file, a binary that exited),
    or is already running; the message says what to do."""


@dataclass
class StackInfo:
    """A running stack: where its servers answer and where its files are."""

    workdir: Path
    prometheus_url: str
    alertmanager_url: str
    api_url: str
    retrainer_url: str
    speed: float
    scrape_seconds: float
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    commands: dict[str, list[str]] = field(default_factory=dict)
    started_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (paths as text)."""
        data = asdict(self)
        data["workdir"] = str(self.workdir)
        data["logs"] = {k: str(v) for k, v in self.logs.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StackInfo:
        """The inverse of :meth:`to_dict`."""
        values = dict(data)
        values["workdir"] = Path(values["workdir"])
        values["logs"] = {k: Path(v) for k, v in values.get("logs", {}).items()}
        return cls(**values)

    def url(self, component: str) -> str:
        """The base URL of ``prometheus`` or ``alertmanager``."""
        return self.prometheus_url if component == "prometheus" else self.alertmanager_url


# ----------------------------------------------------------------------------- processes


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, option: str, host: str = HOST) -> None:
    """Raise :class:`StackError` when ``host:port`` cannot be listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StackError(
                f"port {port} on {host} is taken ({exc.strerror or exc}): choose another "
                f"{option}, or stop what listens there"
            ) from None


def process_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, where /proc tells, its command line contains
    ``marker`` (so that a reused pid is not taken for ours)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return marker is None
    proc = Path(f"/proc/{pid}")
    with contextlib.suppress(OSError):
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if marker is not None:
            return marker in proc.joinpath("cmdline").read_bytes().decode(errors="replace")
    return True


def is_ready(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url/-/ready`` answers 200."""
    import requests

    try:
        return requests.get(f"{url}/-/ready", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the stack


class Stack:
    """Prometheus and Alertmanager for one work folder (see the module docstring)."""

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        config_dir: Path | str = CONFIG_DIR,
        ready_timeout: float = READY_TIMEOUT_S,
    ):
        self.workdir = Path(workdir or DEFAULT_WORKDIR).expanduser().resolve()
        self.config_dir = Path(config_dir)
        self.ready_timeout = ready_timeout
        self._procs: dict[str, subprocess.Popen] = {}
        self._started = False

    @property
    def state_file(self) -> Path:
        """Where the running stack's pids, ports and URLs are written."""
        return self.workdir / STATE_FILE

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:  # never a stack another process started
            self.stop()

    # ---- state

    def info(self) -> StackInfo | None:
        """The stack last started in this folder (running or not), or None."""
        try:
            return StackInfo.from_dict(json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def _write_state(self, info: StackInfo) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(info.to_dict(), indent=2))
        tmp.replace(self.state_file)

    def _alive(self, info: StackInfo, component: str) -> bool:
        pid = info.pids.get(component)
        return bool(pid) and process_alive(pid, str(self.workdir))

    def status(self) -> dict[str, Any]:
        """Whether each component runs and is ready, with its pid, URL and log file."""
        info = self.info()
        components = {}
        for name in COMPONENTS:
            alive = info is not None and self._alive(info, name)
            components[name] = {
                "running": alive,
                "ready": alive and is_ready(info.url(name)),
                "pid": info.pids.get(name) if alive else None,
                "url": info.url(name) if info else None,
                "log": str(info.logs[name]) if info and name in info.logs else None,
            }
        return {
            "workdir": str(self.workdir),
            "running": all(c["running"] for c in components.values()),
            "components": components,
            **(
                {"api_url": info.api_url, "retrainer_url": info.retrainer_url, "speed": info.speed}
                if info
                else {}
            ),
        }

    # ---- start

    def start(
        self,
        api_url: str = DEFAULT_API_URL,
        retrainer_url: str = DEFAULT_RETRAINER_URL,
        *,
        prometheus_port: int = 0,
        alertmanager_port: int = 0,
        speed: float = 1.0,
        replace: bool = False,
    ) -> StackInfo:
        """Render the configuration, check it, start Alertmanager and Prometheus and wait
        until both are ready. Port 0: a free port. ``replace``: stop a stack already running
        in this folder first (a notebook cell run twice). Raises :class:`StackError` (a port
        taken, a bad rendered file, a binary that exits, a stack already running here) or
        :class:`~hdb_mlops.monitoring.checks.MissingBinaryError`."""
        binaries = require_binaries()
        if replace:
            self.stop()
        previous = self.info()
        if previous and any(self._alive(previous, c) for c in COMPONENTS):
            raise StackError(
                f"a monitoring stack is already running in {self.workdir} "
                f"(Prometheus at {previous.prometheus_url}): stop it first with "
                f"`hdb-mlops monitor down --workdir {self.workdir}`"
            )
        ports = {}
        for name, port, option in (
            ("prometheus", prometheus_port, "--prometheus-port"),
            ("alertmanager", alertmanager_port, "--alertmanager-port"),
        ):
            if port:
                check_port_free(port, option)
            ports[name] = port or free_port()
        if ports["prometheus"] == ports["alertmanager"]:
            raise StackError("Prometheus and Alertmanager need two different ports")
        rendered = render_local(
            self.workdir,
            api_url=api_url,
            retrainer_url=retrainer_url,
            prometheus_port=ports["prometheus"],
            alertmanager_port=ports["alertmanager"],
            speed=speed,
            config_dir=self.config_dir,
        )
        for result in check_rendered(rendered):
            if not result.ok:
                raise StackError(f"{result.name} failed: {result.output}")
        data, logs = self.workdir / "data", self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        commands = {
            "alertmanager": [
                binaries["alertmanager"],
                f"--config.file={rendered.alertmanager_config}",
                f"--storage.path={data / 'alertmanager'}",
                f"--web.listen-address={HOST}:{ports['alertmanager']}",
                "--cluster.listen-address=",  # a single instance: no gossip port
            ],
            "prometheus": [
                binaries["prometheus"],
                f"--config.file={rendered.prometheus_config}",
                f"--storage.tsdb.path={data / 'prometheus'}",
                f"--web.listen-address={HOST}:{ports['prometheus']}",
                "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=7d",
                *prometheus_flags(speed, rendered.scrape_seconds),
            ],
        }
        info = StackInfo(
            workdir=self.workdir,
            prometheus_url=f"http://{HOST}:{ports['prometheus']}",
            alertmanager_url=f"http://{HOST}:{ports['alertmanager']}",
            api_url=api_url,
            retrainer_url=retrainer_url,
            speed=speed,
            scrape_seconds=rendered.scrape_seconds,
            logs={name: logs / f"{name}.log" for name in COMPONENTS},
            commands=commands,
            started_at=time.time(),
        )
        self._started = True
        try:
            for name in COMPONENTS:
                self._launch(info, name)
        except BaseException:
            self._write_state(info)
            self.stop()
            raise
        return info

    def start_component(self, component: str) -> StackInfo:
        """Start ``prometheus`` or ``alertmanager`` again with the files and port of the last
        start (after :meth:`stop_component`); a no-op when it runs."""
        info = self._require_info()
        if not self._alive(info, component):
            self._launch(info, component)
        return info

    def _launch(self, info: StackInfo, name: str) -> None:
        """Start one component, record its pid in the state file, wait until it is ready."""
        log_path = info.logs[name]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                info.commands[name],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # not killed with the shell that ran `monitor up`
            )
        self._procs[name] = proc
        info.pids[name] = proc.pid
        self._write_state(info)
        url = info.url(name)
        deadline = time.monotonic() + self.ready_timeout
        while not is_ready(url, timeout=1.0):
            if proc.poll() is not None:
                log = _tail(log_path)
                hint = ""
                if "address already in use" in log:
                    hint = f" (port {url.rsplit(':', 1)[1]} is taken: choose another port)"
                raise StackError(f"{name} exited with status {proc.returncode}{hint}: {log}")
            if time.monotonic() > deadline:
                raise StackError(
                    f"{name} was not ready at {url} after {self.ready_timeout:g} s; "
                    f"its log ({log_path}) ends: {_tail(log_path, 800)}"
                )
            time.sleep(0.1)

    # ---- stop

    def _require_info(self) -> StackInfo:
        info = self.info()
        if info is None:
            raise StackError(
                f"no monitoring stack was started in {self.workdir}: "
                "start one with `hdb-mlops monitor up`"
            )
        return info

    def stop_component(self, component: str, timeout: float = STOP_TIMEOUT_S) -> bool:
        """Stop ``prometheus`` or ``alertmanager`` (SIGTERM, then SIGKILL after ``timeout``
        seconds); returns whether it was running."""
        info = self._require_info()
        pid = info.pids.get(component)
        if not pid or not self._alive(info, component):
            return False
        os.kill(pid, signal.SIGTERM)
        proc = self._procs.pop(component, None)
        deadline = time.monotonic() + timeout
        while self._alive(info, component) and time.monotonic() < deadline:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.1)
            else:
                time.sleep(0.1)
        if self._alive(info, component):
            os.kill(pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=10)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop whatever of the stack runs in this folder; returns the components stopped."""
        if self.info() is None:
            return []
        return [c for c in reversed(COMPONENTS) if self.stop_component(c, timeout)]
