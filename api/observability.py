"""Request ids, structured JSON logs and Prometheus metrics."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def request_context(request: Request, call_next: Any) -> Response:
        incoming = request.headers.get("x-request-id", "")
        request.state.request_id = incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        start = time.perf_counter()
        response = await call_next(request)
        elapsed = time.perf_counter() - start
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        LATENCY.labels(request.method, path).observe(elapsed)
        response.headers["X-Request-ID"] = request.state.request_id
        access_log.info("request", extra={
            "request_id": request.state.request_id, "method": request.method, "path": request.url.path,
            "status": response.status_code, "duration_ms": round(elapsed * 1000, 2),
            "user": getattr(request.state, "user", None)})
        return response


def render_metrics(breached_open_tasks: int) -> bytes:
    for name, gauge in COUNTERS.items():
        gauge.set(stats.get(name))
    SLA_BREACHED.set(breached_open_tasks)
    return generate_latest(REGISTRY)
