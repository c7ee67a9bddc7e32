"""A scriptable local stand-in for the data.gov.sg download API (no internet in tests).

It serves, on 127.0.0.1 and a free port::

    GET /v1/public/api/datasets/{id}/initiate-download  -> {"code": 0, "data": {"message": ...}}
    GET /v1/public/api/datasets/{id}/poll-download      -> in progress for the first
                                                           ``in_progress_polls`` polls of each
                                                           dataset, then a signed-looking url
    GET /files/{id}.csv?X-Amz-Signature=...             -> ``payloads[id]`` or ``payload``

Each route ("initiate", "poll", "file") has a queue of scripted :class:`StubResponse`s that are
served, in order, before the default behaviour; every request is recorded.

    with DatagovStub(payload=csv_bytes) as stub:
        stub.script("initiate", StubResponse(500))
        download_dataset("2017-onwards", tmp_path, base_url=stub.url, sleep=sleeps.append)
        assert stub.count("initiate") == 2
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROUTES = ("initiate", "poll", "file")
_API = re.compile(r"^/v1/public/api/datasets/(?P<id>[^/]+)/(?P<op>initiate|poll)-download$")
_FILE = re.compile(r"^/files/(?P<id>[^/]+)\.csv$")


@dataclass
class StubResponse:
    """One scripted answer.

    ``body=None`` means the route's normal body (the JSON envelope or the payload), so a
    response can change only the status or the headers. ``content_length`` overrides the
    Content-Length header (larger than the body simulates a truncated transfer); ``drop``
    closes the connection without an answer; ``delay`` waits before answering.
    """

    status: int = 200
    body: bytes | dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | None = None
    drop: bool = False
    delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    route: str  # "initiate", "poll", "file" or "unknown"
    dataset_id: str | None
    path: str  # with the query string
    headers: dict[str, str]


class DatagovStub:
    """The fake API server; use as a context manager or call start()/stop()."""

    def __init__(self, payload: bytes = b"", *, in_progress_polls: int = 1) -> None:
        self.payload = payload
        self.payloads: dict[str, bytes] = {}
        self.in_progress_polls = in_progress_polls
        self.requests: list[RecordedRequest] = []
        self._scripts: dict[str, deque[StubResponse]] = {r: deque() for r in ROUTES}
        self._polls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- scripting ---------------------------------------------------------------------------
    def script(self, route: str, *responses: StubResponse) -> None:
        """Queue answers for a route ("initiate", "poll" or "file"), served before the default."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}: use one of {ROUTES}")
        with self._lock:
            self._scripts[route].extend(responses)

    def count(self, route: str | None = None) -> int:
        """Requests received so far, for one route or in all."""
        with self._lock:
            return sum(1 for r in self.requests if route is None or r.route == route)

    @property
    def url(self) -> str:
        assert self._server is not None, "stub not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> DatagovStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> DatagovStub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling --------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?", 1)[0]
        route, ds_id = "unknown", None
        if m := _API.match(path):
            route, ds_id = ("initiate" if m["op"] == "initiate" else "poll"), m["id"]
        elif m := _FILE.match(path):
            route, ds_id = "file", m["id"]
        with self._lock:
            self.requests.append(RecordedRequest(route, ds_id, h.path, dict(h.headers.items())))
            scripted = self._scripts[route].popleft() if self._scripts.get(route) else None
            polls = 0
            if route == "poll":
                self._polls[ds_id] += 1
                polls = self._polls[ds_id]
        if route == "unknown":
            return self._send(h, StubResponse(404), {"code": 4, "errorMsg": "Not found"})

        resp = scripted or StubResponse()
        if resp.delay:
            time.sleep(resp.delay)
        if resp.drop:
            h.close_connection = True
            return None
        default: bytes | dict[str, Any]
        if route == "initiate":
            default = _envelope({"message": "Download initiated"})
        elif route == "poll" and polls <= self.in_progress_polls:
            default = _envelope({"status": "DOWNLOAD_IN_PROGRESS"})
        elif route == "poll":
            url = f"{self.url}/files/{ds_id}.csv?X-Amz-Expires=300&X-Amz-Signature=f4ke"
            default = _envelope({"status": "DOWNLOAD_SUCCESS", "url": url})
        else:
            default = self.payloads.get(ds_id or "", self.payload)
        return self._send(h, resp, default)

    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, resp: StubResponse, default: bytes | dict[str, Any]
    ) -> None:
        body = default if resp.body is None else resp.body
        is_json = isinstance(body, dict)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h.send_response(resp.status)
        h.send_header("Content-Type", "application/json" if is_json else "text/csv")
        length = len(data) if resp.content_length is None else resp.content_length
        h.send_header("Content-Length", str(length))
        for name, value in resp.headers.items():
            h.send_header(name, value)
        h.end_headers()
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        h.close_connection = True


def _envelope(data: dict[str, Any]) -> dict[str, Any]:
    return {"code": 0, "data": data, "errorMsg": None}
