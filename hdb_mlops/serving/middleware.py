"""ASGI middleware: request ids, the body size limit and read timeout, metrics (every 4xx
counted by its error code) and one log line per request."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from pydantic_core import to_json

from hdb_mlops.serving.errors import ERROR_CODE_KEY, ERROR_NAMES, BodyTimeout, BodyTooLarge
from hdb_mlops.serving.metrics import ServiceMetrics

log = logging.getLogger(__name__)


_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Seconds a client has, from the app's first read, to send the whole request body.
DEFAULT_BODY_TIMEOUT_S = 10.0
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


class RequestContextMiddleware:
    """Pure ASGI middleware: request id (``X-Request-ID`` set or echoed), body size limit,
    body read timeout, metrics by route template and status, one JSON log line per request,
    and a JSON 500 for any unhandled exception (never an HTML or plain-text page).

    The body must arrive within ``body_timeout`` seconds of the app's first read (uvicorn
    bounds idle keep-alive connections, not a body that stalls): after that the request is
    answered 408 with the JSON error shape and the connection closed, so a client that
    declares ``Content-Length: 400`` and sends 10 bytes cannot hold a connection. None
    disables the bound."""

    def __init__(
        self,
        app: Any,
        metrics: ServiceMetrics,
        max_body_bytes: int,
        body_timeout: float | None = DEFAULT_BODY_TIMEOUT_S,
    ):
        if body_timeout is not None and body_timeout <= 0:
            raise ValueError(f"body_timeout must be positive, not {body_timeout}")
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self._paths: frozenset[str] | None = None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = None
        content_length = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                candidate = value.decode("latin-1")
                rid = candidate if _REQUEST_ID_RE.match(candidate) else None
            elif key == b"content-length":
                content_length = value
        rid = rid or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        limit = self.max_body_bytes
        timeout = self.body_timeout
        received = 0
        deadline: float | None = None
        body_done = timeout is None

        async def receive_limited() -> dict:
            nonlocal received, deadline, body_done
            if body_done:  # later reads wait for a disconnect: no bound
                message = await receive()
            else:
                if deadline is None:
                    assert timeout is not None
                    deadline = asyncio.get_running_loop().time() + timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTimeout(timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
                if not message.get("more_body", False):
                    body_done = True
            return message

        too_large = {"field": "body", "reason": str(BodyTooLarge(limit).detail)}

        async def answer_error(code: int, error: str, detail: list, close: bool = False) -> None:
            state[ERROR_CODE_KEY] = error
            await self._send_error(send_with_id, code, error, detail, rid, close=close)

        try:
            if content_length is not None and int(content_length) > limit:
                await answer_error(413, "payload_too_large", [too_large])
            else:
                await self.app(scope, receive_limited, send_with_id)
        except BodyTooLarge:
            if not started:
                await answer_error(413, "payload_too_large", [too_large])
        except BodyTimeout as exc:
            if not started:
                detail = [{"field": "body", "reason": str(exc.detail)}]
                await answer_error(408, "request_timeout", detail, close=True)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid, "path": scope.get("path")})
            if not started:
                detail = [{"field": "", "reason": "internal error; see the logs for request_id"}]
                await answer_error(500, "internal_error", detail)
        finally:
            elapsed = time.perf_counter() - start
            endpoint = self._endpoint(scope)
            method = scope.get("method", "")
            method = method if method in _HTTP_METHODS else "OTHER"  # bounded label values
            self.metrics.observe_request(method, endpoint, str(status), elapsed)
            if 400 <= status < 500:
                # the code error_response() left (a 413 is batch_too_large or
                # payload_too_large), else the status' name as the JSON body spells it
                code = state.get(ERROR_CODE_KEY) or ERROR_NAMES.get(status, f"http_{status}")
                self.metrics.observe_rejection(code)
            if log.isEnabledFor(logging.INFO):
                log.info(
                    "request",
                    extra={
                        "request_id": rid,
                        "method": method,
                        "path": scope.get("path"),
                        "endpoint": endpoint,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )

    def _endpoint(self, scope: dict) -> str:
        """The route template for metrics: the matched route's path, else the request path
        when it is one of the app's (static) routes, else "unmatched" (bounded labels)."""
        route_path = getattr(scope.get("route"), "path", None)
        if route_path:
            return route_path
        if self._paths is None:
            app = scope.get("app")
            self._paths = frozenset(getattr(r, "path", "") for r in getattr(app, "routes", ()))
        path = scope.get("path", "")
        return path if path in self._paths else "unmatched"

    @staticmethod
    async def _send_error(
        send: Any,
        status: int,
        error: str,
        detail: list[dict[str, str]],
        rid: str,
        close: bool = False,
    ) -> None:
        body = to_json({"error": error, "detail": detail, "request_id": rid})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if close:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
