"""Edge behaviour that needs a real server (uvicorn) or the full middleware stack.

- the body limit holds for chunked bodies (TestClient always sends a length);
- a streamed export that fails after it started ends as a broken transfer, not a clean end;
- any 500 that remains is counted in ``sopflow_http_requests_total`` and logged as one JSON
  line with method, path, status, request id and traceback.
"""
from __future__ import annotations

import io
import json
import logging
import socket
import threading

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.observability import REGISTRY, JsonFormatter
from engine.commands import SYSTEM
from engine.config import Settings
from engine.identity import seed_demo
from tests.api_helpers import live_server
from tests.bpmnkit import Bpmn
from tests.helpers import snapshot


def _chunked_request(host: str, port: int, head: str, total: int, chunk: bytes) -> bytes:
    """Send ``total`` bytes of ``chunk`` repeated as a chunked body; return what the server answered."""
    sock = socket.create_connection((host, port), timeout=30)
    answer = bytearray()

    def send_body() -> None:
        try:
            sock.sendall(head.encode())
            sent = 0
            while sent < total:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server stopped reading (it answered 413 and closed): expected

    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    except OSError:
        pass
    finally:
        sock.close()
        sender.join(timeout=30)
    return bytes(answer)


def test_a_chunked_25_mb_json_body_is_refused_with_413_and_nothing_is_stored(db, clock):
    b = Bpmn("p").start().user("u1", "U", props={"candidateGroups": "staff"}).end().chain("start", "u1", "end")
    with live_server(db) as (host, port, tokens):
        r = httpx.post(f"http://{host}:{port}/api/deployments", headers={"Authorization": f"Bearer {tokens['dora']}"},
                       files=[("files", ("p.bpmn", b.xml(), "application/xml"))])
        assert r.status_code == 201, r.text
        before = snapshot(db)
        head = (f"POST /api/process-definitions/p/start HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {tokens['rita']}\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n")
        answer = _chunked_request(host, port, head, 25 * 1024 * 1024, b"x" * 65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert snapshot(db) == before


def test_a_chunked_25_mb_upload_is_refused_with_413_and_nothing_is_stored(db, clock):
    with live_server(db) as (host, port, tokens):
        before = snapshot(db)
        boundary = "sopflowboundary"
        head = (f"POST /api/deployments HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {tokens['dora']}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n")
        preamble = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bpmn\"\r\n"
                    "Content-Type: application/xml\r\n\r\n").encode()
        sock_answer = _chunked_request(host, port, head + f"{len(preamble):x}\r\n" + preamble.decode() + "\r\n",
                                       25 * 1024 * 1024, b"<" * 65536)
        assert sock_answer.startswith(b"HTTP/1.1 413"), sock_answer[:200]
        assert snapshot(db) == before
        # the server is still fine afterwards
        assert httpx.get(f"http://{host}:{port}/healthz").status_code == 200


def test_an_export_that_fails_mid_stream_ends_as_a_broken_transfer(db, clock, monkeypatch):
    from api.routes import audit as audit_routes

    b = Bpmn("p").start().user("u1", "U", props={"candidateGroups": "staff"}).end().chain("start", "u1", "end")
    with live_server(db) as (host, port, tokens):
        base = f"http://{host}:{port}"
        auth = {"Authorization": f"Bearer {tokens['dora']}"}
        assert httpx.post(f"{base}/api/deployments", headers=auth,
                          files=[("files", ("p.bpmn", b.xml(), "application/xml"))]).status_code == 201
        rita = {"Authorization": f"Bearer {tokens['rita']}"}
        for _ in range(3):
            assert httpx.post(f"{base}/api/process-definitions/p/start", headers=rita, json={}).status_code == 201
        audrey = {"Authorization": f"Bearer {tokens['audrey']}"}
        whole = httpx.get(f"{base}/api/audit/export", headers=audrey, params={"format": "jsonl"})
        assert whole.status_code == 200 and len(whole.text.splitlines()) > 6

        monkeypatch.setattr(audit_routes, "EXPORT_BATCH", 2)
        calls = {"n": 0}
        real_line = audit_routes._line

        def failing_line(event, format):  # noqa: A002
            calls["n"] += 1
            if calls["n"] > 4:  # after the first batch (read before the first byte) and a bit more
                raise RuntimeError("the database went away")
            return real_line(event, format)

        monkeypatch.setattr(audit_routes, "_line", failing_line)
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)), httpx.stream(
                "GET", f"{base}/api/audit/export", headers=audrey, params={"format": "jsonl"}) as r:
            assert r.status_code == 200  # the headers went out before the failure
            r.read()


def _requests_total(method: str, route: str, status: str) -> float:
    value = REGISTRY.get_sample_value("sopflow_http_requests_total",
                                      {"method": method, "route": route, "status": status})
    return value or 0.0


def test_a_remaining_500_is_counted_and_logged_in_one_line(db, clock):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    app = create_app(settings=Settings(), db=db, run_worker=False)

    def boom() -> dict:
        raise RuntimeError("a bug nobody caught")

    app.add_api_route("/api/test-boom", boom, methods=["GET"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("sopflow.access")
    access.addHandler(handler)
    before = _requests_total("GET", "/api/test-boom", "500")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/api/test-boom", headers={"Authorization": f"Bearer {tokens['admin']}",
                                                      "X-Request-ID": "req-boom-1"})
    finally:
        access.removeHandler(handler)
    assert r.status_code == 500
    body = r.json()
    assert body["code"] == "internal_error" and body["request_id"] == "req-boom-1"
    assert "a bug nobody caught" not in r.text  # no exception text to clients
    assert r.headers["X-Request-ID"] == "req-boom-1"
    assert _requests_total("GET", "/api/test-boom", "500") == before + 1
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    failed = [line for line in lines if line.get("request_id") == "req-boom-1"]
    assert len(failed) == 1
    line = failed[0]
    assert (line["level"], line["method"], line["path"], line["status"]) == ("ERROR", "GET", "/api/test-boom", 500)
    assert "Traceback" in line["exception"] and "RuntimeError: a bug nobody caught" in line["exception"]


def test_refusals_at_the_edge_are_counted_with_their_status(db, clock):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    app = create_app(settings=Settings(), db=db, run_worker=False)
    before = _requests_total("POST", "unmatched", "422")
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.post("/api/messages", headers={"Authorization": f"Bearer {tokens['rita']}",
                                                  "Content-Type": "application/json"},
                        content=b'{"name": "\\ud800"}')
    assert r.status_code == 422 and r.headers["X-Request-ID"]
    assert _requests_total("POST", "unmatched", "422") == before + 1
