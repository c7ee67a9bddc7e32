"""Strict JSON request bodies, for every route: duplicate keys, NaN, deep nesting refused.

Python's ``json.loads`` keeps the last of duplicated keys, reads ``NaN`` and ``Infinity``
(not JSON) and raises ``RecursionError`` for arrays nested ~1,000 deep. :func:`loads` refuses
all three (and any other decoding error) with :class:`MalformedJSON`, an HTTP 400 whose
detail names the field (the duplicated key's dotted path, else ``body``) and the reason.

FastAPI decodes a body with ``await request.json()``; :class:`StrictJSONRoute` (the app's
``route_class``) hands its endpoints a :class:`StrictJSONRequest` whose ``json()`` is
:func:`loads`, so /predict and /predict/batch decode exactly like /invocations. The cost is
one Python call per JSON object (a dict build and a length check), about a microsecond a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException


class MalformedJSON(StarletteHTTPException):
    """A body that is not acceptable JSON: 400 ``malformed_json`` naming ``field``.

    An HTTPException so that FastAPI's body parsing passes it through to the app's
    handler (as it does for the body size limit)."""

    def __init__(self, reason: str, field: str = "body"):
        super().__init__(400, reason)
        self.field = field
        self.reason = reason


class _DuplicateKey(Exception):
    pass


class _Duplicated(dict):
    """An object with a duplicated key, kept while locating it (second pass only)."""

    key: str = ""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _mark_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Duplicated(out)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.key = key
            break
        seen.add(key)
    return marked


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value: send numbers only")


def _duplicate_path(body: bytes | str) -> tuple[str, str]:
    """(dotted path, key) of the first object, in document order, with a duplicated key."""
    root = json.loads(body, object_pairs_hook=_mark_duplicates)
    stack: list[tuple[Any, tuple[str, ...]]] = [(root, ())]
    while stack:  # iterative: the document may be nested hundreds deep
        node, path = stack.pop()
        if isinstance(node, _Duplicated):
            return ".".join((*path, node.key)), node.key
        if isinstance(node, dict):
            children = [(v, (*path, str(k))) for k, v in node.items()]
        elif isinstance(node, list):
            children = [(v, (*path, str(i))) for i, v in enumerate(node)]
        else:
            continue
        stack.extend(reversed(children))
    return "body", ""  # pragma: no cover - the first pass found one


def loads(body: bytes | str) -> Any:
    """Decode a request body as strict JSON, or raise :class:`MalformedJSON`."""
    try:
        return json.loads(body, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except _DuplicateKey:
        try:
            field, key = _duplicate_path(body)
        except (RecursionError, ValueError):  # also nested too deeply, further on
            field, key = "body", "?"
        raise MalformedJSON(
            f"duplicate key {key!r} in a JSON object: send each field once", field
        ) from None
    except RecursionError:
        raise MalformedJSON(
            "JSON nested too deeply: arrays and objects nested hundreds of levels deep "
            "are refused (a request row is one object of plain values)"
        ) from None
    except json.JSONDecodeError as exc:
        raise MalformedJSON(f"{exc.msg} at character {exc.pos}") from None
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"the body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:  # NaN/Infinity, an integer over Python's 4,300 digits
        raise MalformedJSON(str(exc).split(";", 1)[0]) from None


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`loads`."""

    async def json(self) -> Any:
        """The body decoded by :func:`loads` (cached)."""
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An APIRoute whose endpoint sees a :class:`StrictJSONRequest` (FastAPI's documented
    way to change how a body is read)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, called with a :class:`StrictJSONRequest`."""
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict_handler
