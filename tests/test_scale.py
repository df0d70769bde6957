"""Issue 11 items 2-3: the token cache's revocation bound, and `sopflow serve --workers 2` live."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from engine.commands import SYSTEM
from engine.config import Settings
from engine.identity import seed_demo
from tests.bpmnkit import Bpmn
from tests.helpers import deploy_xml

ROOT = Path(__file__).resolve().parent.parent


def test_revocation_takes_effect_at_once_here_and_within_the_cache_lifetime_elsewhere(db, clock):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    settings = Settings(token_cache_seconds=1.0)
    # two server processes over one database: each app has its own token cache
    here = TestClient(create_app(settings=settings, db=db, run_worker=False))
    there = TestClient(create_app(settings=settings, db=db, run_worker=False))
    rita = {"Authorization": f"Bearer {tokens['rita']}"}
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    assert here.get("/api/me", headers=rita).status_code == 200
    assert there.get("/api/me", headers=rita).status_code == 200  # now remembered there
    assert here.delete("/api/users/rita/tokens", headers=admin).json()["revoked"] >= 1
    assert here.get("/api/me", headers=rita).status_code == 401  # the revoking process forgets at once
    assert there.get("/api/me", headers=rita).status_code == 200  # the other within its cache lifetime...
    time.sleep(1.1)
    assert there.get("/api/me", headers=rita).status_code == 401  # ...and no longer
    assert there.get("/api/me", headers={"Authorization": "Bearer sop_unknown"}).status_code == 401


def test_group_change_takes_effect_at_once_in_the_process_that_made_it(db, clock):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    client = TestClient(create_app(settings=Settings(token_cache_seconds=60), db=db, run_worker=False))
    rita = {"Authorization": f"Bearer {tokens['rita']}"}
    assert client.get("/api/me", headers=rita).status_code == 200
    changed = client.put("/api/users/rita/groups", headers={"Authorization": f"Bearer {tokens['admin']}"},
                         json={"groups": ["night-shift"]})
    assert changed.status_code == 200, changed.text
    assert client.get("/api/me", headers=rita).json()["groups"] == ["night-shift"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _call(url: str, token: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,  # noqa: S310
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (a local test server)
        return json.loads(response.read())


def test_serve_with_two_workers_answers_from_both_and_fires_a_timer_once(db, tmp_path):
    tokens = db.command(lambda s: seed_demo(s, actor=SYSTEM))
    deploy_xml(db, Bpmn("wait").start().timer_catch("pause", '"PT1S"').script("after", "fired = fired + 1")
               .end().chain("start", "pause", "after", "end").xml())
    port = _free_port()
    env = {**os.environ, "SOPFLOW_DATA_DIR": str(tmp_path), "SOPFLOW_DATABASE_URL": db.url}
    server = subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--workers", "2", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):  # noqa: S310
                    pass
                workers = [c for c in _children(server.pid)
                           if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
                if len(workers) == 2:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):  # still starting (a loaded machine)
                pass
            assert server.poll() is None and time.monotonic() < deadline, "sopflow serve did not come up with 2 workers"
            time.sleep(0.2)
        before = {w: _cpu_ticks(w) for w in workers}
        with ThreadPoolExecutor(8) as pool:  # a new connection per request: the kernel spreads accepts
            answers = list(pool.map(lambda _: _call(f"{base}/api/me", tokens["rita"]), range(400)))
        assert all(a["name"] == "rita" for a in answers)
        assert all(_cpu_ticks(w) > before[w] for w in workers), "both worker processes answer requests"

        started = _call(f"{base}/api/process-definitions/wait/start", tokens["admin"], {"variables": {"fired": 0}})
        deadline = time.monotonic() + 30
        while (detail := _call(f"{base}/api/process-instances/{started['id']}", tokens["admin"]))["status"] != "completed":
            assert time.monotonic() < deadline, detail
            time.sleep(0.3)
        time.sleep(1.5)  # a second firing, if any worker process also ran timers, would have landed by now
        detail = _call(f"{base}/api/process-instances/{started['id']}", tokens["admin"])
        assert detail["variables"]["fired"] == 1
    finally:
        server.terminate()
        server.wait(timeout=20)
