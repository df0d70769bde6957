"""Checks on every request body before any route sees it (a pure ASGI middleware).

- **Size, counted as bytes arrive.** ``Content-Length`` above the limit is refused at
  once; a chunked body (no length) is counted as it streams in and refused with 413 as
  soon as it crosses the limit, so neither a stored nor an in-memory body can exceed it.
- **JSON bodies are bounded, valid data** (``application/json``, ``*+json``, or no content
  type, which FastAPI reads as JSON): at most :data:`MAX_JSON_BYTES` (413 above), nested
  at most :data:`MAX_JSON_DEPTH` levels, every string and name valid Unicode (no lone
  surrogates, which JSON escapes such as ``"\\ud800"`` can carry), numbers finite (no
  ``NaN``/``Infinity``, no ``1e400``). A refusal is a 422 problem naming the place
  (``variables.note``) before the route or the engine runs. Malformed JSON is left to
  FastAPI's own 422.

JSON bodies are buffered (the route parses them whole anyway) and parsed twice, here and
by FastAPI: a 1 MiB body costs a few milliseconds more, small ones microseconds. Other
bodies (multipart deployments) stream through, counted.
"""
from __future__ import annotations

import json
import math
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem
from engine import limits

MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32


class _Refused(ValueError):
    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is out of range (numbers must be finite)")
    return value


def _no_constant(text: str) -> Any:
    raise _Refused(f"{text} is not a JSON number (numbers must be finite)")


def check_json(body: bytes) -> Any:
    """Parse a JSON body and check it; raises ``_Refused`` (or ``json.JSONDecodeError`` when malformed)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused("the body is not valid UTF-8") from None
    try:
        data = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except RecursionError:
        raise _Refused(f"the body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError:
        raise
    except _Refused:
        raise
    except ValueError:  # Python refuses integers of more than 4300 digits
        raise _Refused("the body holds a number with too many digits") from None
    found = limits.find_problem(data, max_depth=MAX_JSON_DEPTH, max_nodes=limits.MAX_NODES)
    if found is not None:
        raise _Refused(found.describe("the value"), field=found.path or None)
    return data


def _is_json(headers: Headers) -> bool:
    content_type = headers.get("content-type")
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class RequestGuard:
    """ASGI middleware: byte-counted body limit and JSON body checks (see module docstring)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, max_json_bytes: int = MAX_JSON_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_json_bytes = min(max_json_bytes, max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send, f"the request body is {declared} bytes; "
                                  f"the limit is {self.max_bytes} bytes", self.max_bytes)
            return
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and not declared and \
                "transfer-encoding" not in headers:
            await self.app(scope, receive, send)
            return
        if _is_json(headers):
            await self._json(scope, receive, send)
        else:
            await self._streamed(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, detail: str, limit: int) -> None:
        response = problem(Request(scope), 413, "Request too large", "too_large", detail, limit=limit)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _json(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.max_json_bytes
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await self._too_large(scope, receive, send, f"a JSON body may hold at most {limit} bytes", limit)
                return
            if not message.get("more_body", False):
                break
        if body:
            try:
                check_json(bytes(body))
            except json.JSONDecodeError:
                pass  # FastAPI answers malformed JSON with its own 422
            except _Refused as exc:
                await problem(Request(scope), 422, "Invalid input", "invalid_input",
                              f"the request is invalid: {exc.detail}", field=exc.field)(scope, receive, send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the body through, counting; past the limit the route's answer is replaced by a 413."""
        seen = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True  # stop reading: the route sees a disconnect and gives up
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # whatever the route answers to a cut-off body, the client gets the 413
            started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._too_large(scope, receive, send, f"the request body is larger than {self.max_bytes} "
                                  "bytes (the limit)", self.max_bytes)
