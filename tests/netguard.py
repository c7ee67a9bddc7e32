"""A guard that fails a test on any network traffic off this machine, from any thread.

Installed with a MonkeyPatch, it wraps ``socket.getaddrinfo`` (name look-ups),
``socket.socket.connect`` / ``connect_ex`` (every TCP/UDP connection, whoever makes it:
urllib3, botocore, requests) and ``threading.Thread.start`` (to see background threads such
as the SageMaker SDK's ``sagemaker-telemetry``). A call for a non-loopback host is recorded
and refused; loopback calls are recorded apart. The records are shared by every thread, so a
background thread whose exception nobody sees is caught all the same.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "ip6-localhost"}


def is_loopback(host: Any) -> bool:
    """Whether ``host`` names this machine."""
    text = str(host)
    return text in LOOPBACK_NAMES or text.startswith("127.")


@dataclass
class NetworkGuard:
    """What the patched functions saw."""

    refused: list[tuple[str, str, str]] = field(default_factory=list)
    loopback: list[tuple[str, str, str]] = field(default_factory=list)
    threads: list[str] = field(default_factory=list)

    def _seen(self, kind: str, host: Any) -> None:
        entry = (kind, str(host), threading.current_thread().name)
        if is_loopback(host):
            self.loopback.append(entry)
            return
        self.refused.append(entry)
        raise OSError(f"network guard: {kind} to {host} refused (tests stay on 127.0.0.1)")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
        """Patch the socket and thread functions for the life of ``monkeypatch``."""
        connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
        getaddrinfo, start = socket.getaddrinfo, threading.Thread.start
        guard = self

        def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None:
                guard._seen("dns", host)
            return getaddrinfo(host, *args, **kwargs)

        def guarded_connect(sock: socket.socket, address: Any) -> Any:
            if isinstance(address, tuple):
                guard._seen("connect", address[0])
            return connect(sock, address)

        def guarded_connect_ex(sock: socket.socket, address: Any) -> Any:
            if isinstance(address, tuple):
                guard._seen("connect", address[0])
            return connect_ex(sock, address)

        def recording_start(thread: threading.Thread) -> None:
            guard.threads.append(thread.name)
            start(thread)

        monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        monkeypatch.setattr(socket.socket, "connect", guarded_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        monkeypatch.setattr(threading.Thread, "start", recording_start)
        return self

    def assert_offline(self, loopback_too: bool = False) -> None:
        """Fail when anything went off the machine (or anywhere, with ``loopback_too``) or a
        telemetry thread was started."""
        assert self.refused == [], f"network calls off this machine: {self.refused}"
        if loopback_too:
            assert self.loopback == [], f"network calls (loopback): {self.loopback}"
        telemetry = [name for name in self.threads if "telemetry" in name]
        assert telemetry == [], f"telemetry threads were started: {telemetry}"
