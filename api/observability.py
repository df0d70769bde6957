"""Request ids, structured JSON logs and Prometheus metrics."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from engine import stats

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("sopflow_http_requests_total", "HTTP requests", ["method", "route", "status"], registry=REGISTRY)
LATENCY = Histogram("sopflow_http_request_seconds", "HTTP request latency", ["method", "route"], registry=REGISTRY)
COUNTERS = {name: Gauge(f"sopflow_{name}_total", help_text, registry=REGISTRY) for name, help_text in (
    ("commands", "engine commands committed"),
    ("command_conflicts", "commands retried because another writer moved the instance first"),
    ("jobs", "timer jobs acquired by workers"),
    ("job_failures", "timer job runs that failed"),
    ("timers_fired", "BPMN timers fired"),
)}
SLA_BREACHED = Gauge("sopflow_sla_breached_open_tasks", "open tasks past their due date", registry=REGISTRY)
access_log = logging.getLogger("sopflow.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                                "message": record.getMessage()}
        for key in ("request_id", "method", "path", "status", "duration_ms", "user", "instance_id", "error"):
            if hasattr(record, key):
                data[key] = getattr(record, key)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("sopflow")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


class RequestObservability:
    """ASGI middleware: a request id, one JSON access-log line and the HTTP metrics for every request.

    It sits outside everything else, so every answer is counted in
    ``sopflow_http_requests_total`` with its status, refusals from the request guard and
    500s included. An exception that escapes the routes becomes here a 500 problem (with
    the request id, never the exception text), counted, and logged as one ERROR line with
    the method, path, status, request id and the traceback. An exception after the
    response started (a failing stream) is logged the same way and re-raised, so the
    server aborts the connection and the client sees a broken transfer, not a clean end.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = False

        async def tagged_send(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        begin = time.perf_counter()
        failure: BaseException | None = None
        try:
            await self.app(scope, receive, tagged_send)
        except Exception as exc:
            failure = exc
            if started:
                raise
            status = 500
            await problems.problem(Request(scope), 500, "Internal error", "internal_error",
                                   "something went wrong on our side; quote the request id when reporting it"
                                   )(scope, receive, tagged_send)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - begin, failure, started)

    @staticmethod
    def _record(scope: Scope, request_id: str, status: int, elapsed: float, failure: BaseException | None,
                aborted: bool) -> None:
        method = scope["method"]
        route = getattr(scope.get("route"), "path", "unmatched")
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(elapsed)
        extra = {"request_id": request_id, "method": method, "path": scope.get("path", ""), "status": status,
                 "duration_ms": round(elapsed * 1000, 2), "user": scope.get("state", {}).get("user")}
        if failure is not None:
            message = "response aborted after it started" if aborted else "request failed"
            access_log.error(message, extra=extra, exc_info=(type(failure), failure, failure.__traceback__))
        elif status >= 500:
            access_log.error("request", extra=extra)
        else:
            access_log.info("request", extra=extra)


def install(app: FastAPI) -> None:
    """Add the request-id, logging and metrics middleware as the outermost layer."""
    app.add_middleware(RequestObservability)


def render_metrics(breached_open_tasks: int) -> bytes:
    for name, gauge in COUNTERS.items():
        gauge.set(stats.get(name))
    SLA_BREACHED.set(breached_open_tasks)
    return generate_latest(REGISTRY)
