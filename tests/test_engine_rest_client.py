"""Camunda's own Python worker client (camunda-external-task-client-python3, from PyPI) against a live sopflow.

The server is a real uvicorn on a free port in a thread; the client talks HTTP to
``/engine-rest`` exactly as it would to Camunda 7: fetch-and-lock, complete with variables,
failure with retries (down to an incident), and a BPMN error caught by a boundary event.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from engine.store.db import Database
from tests.api_helpers import live_server
from tests.bpmnkit import Bpmn

with warnings.catch_warnings():  # the client still uses pydantic's v1-style validator (a deprecation warning)
    warnings.simplefilter("ignore", DeprecationWarning)
    from camunda.client.external_task_client import ExternalTaskClient
    from camunda.external_task.external_task import ExternalTask
    from camunda.external_task.external_task_worker import ExternalTaskWorker, NoExternalTaskFound


@dataclass
class Live:
    url: str
    tokens: dict[str, str]

    def api(self, method: str, path: str, user: str = "admin", **kw) -> requests.Response:
        return requests.request(method, self.url + path, headers={"Authorization": f"Bearer {self.tokens[user]}"},
                             timeout=30, **kw)


@pytest.fixture
def live(sqlite_db: Database) -> Iterator[Live]:
    with live_server(sqlite_db, lifespan="on") as (host, port, tokens):
        yield Live(f"http://{host}:{port}", tokens)


def _payment_process() -> bytes:
    b = (Bpmn("payment", dialect="camunda").start()
         .raw('<bpmn:serviceTask id="charge" name="Charge the card" camunda:type="external" camunda:topic="charge"/>')
         .raw('<bpmn:serviceTask id="ship" name="Ship" camunda:type="external" camunda:topic="ship"/>').end()
         .raw('<bpmn:boundaryEvent id="declined" attachedToRef="charge"><bpmn:errorEventDefinition errorRef="err"/>'
              "</bpmn:boundaryEvent>")
         .script("note", "outcome = 'declined'").end("end_declined"))
    b.chain("start", "charge", "ship", "end").chain("declined", "note", "end_declined")
    return b.xml().decode().replace(
        "<bpmn:process", '<bpmn:error id="err" name="declined" errorCode="CARD_DECLINED"/><bpmn:process', 1).encode()


CONFIG = {"maxTasks": 1, "lockDuration": 10_000, "asyncResponseTimeout": 1_000, "retries": 3, "retryTimeout": 0,
          "sleepSeconds": 0}


def _worker(live: Live, worker_id: str, **auth) -> ExternalTaskWorker:
    config = {**CONFIG, **(auth or {"auth_bearer": {"access_token": live.tokens["worker"]}})}
    return ExternalTaskWorker(worker_id=worker_id, base_url=live.url + "/engine-rest", config=config)


def _start(live: Live, **variables) -> str:
    r = live.api("POST", "/api/process-definitions/payment/start", user="rita", json={"variables": variables})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _instance(live: Live, instance_id: str) -> dict:
    r = live.api("GET", f"/api/process-instances/{instance_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_camunda_python_client_against_a_live_server(live):
    deployed = requests.post(live.url + "/api/deployments", headers={"Authorization": f"Bearer {live.tokens['dora']}"},
                          files=[("files", ("payment.bpmn", _payment_process(), "application/xml"))], timeout=30)
    assert deployed.status_code == 201, deployed.text
    worker = _worker(live, "py-worker")

    # fetch and complete with variables; the next worker sees them as typed variables
    paid = _start(live, amount=120, customer="ACME")
    seen: dict = {}

    def charge(task: ExternalTask):
        seen.update(task.get_variables())
        return task.complete({"receipt": "R-1", "charged": 120.5})

    worker.fetch_and_execute("charge", charge)
    assert seen == {"amount": 120, "customer": "ACME"}

    def ship(task: ExternalTask):
        assert task.get_variable("receipt") == "R-1" and task.get_business_key() is None
        return task.complete({"shipped": True})

    worker.fetch_and_execute("ship", ship)
    done = _instance(live, paid)
    assert done["status"] == "completed"
    assert {k: done["variables"][k] for k in ("receipt", "charged", "shipped")} == {
        "receipt": "R-1", "charged": 120.5, "shipped": True}

    # failure with retries: the client counts 2 -> 1 -> 0, then an incident; an admin retries it
    failing = _start(live, amount=5)
    retries_seen = []

    def gateway_down(task: ExternalTask):
        retries_seen.append(task._context["retries"])
        return task.failure("payment gateway down", "HTTP 503 from the gateway", max_retries=2, retry_timeout=0)

    for _ in range(3):
        worker.fetch_and_execute("charge", gateway_down)
    assert retries_seen == [None, 2, 1]
    with pytest.raises(NoExternalTaskFound):  # out of retries: not fetched again
        worker.fetch_and_execute("charge", gateway_down)
    incidents = live.api("GET", "/api/incidents", user="worker").json()["items"]
    assert [(i["kind"], i["instance_id"], i["message"]) for i in incidents] == [
        ("failed_external_task", failing, "payment gateway down")]
    camunda_view = live.api("GET", f"/engine-rest/incident?processInstanceId={failing}", user="worker").json()
    assert [i["incidentType"] for i in camunda_view] == ["failedExternalTask"]
    assert live.api("POST", f"/api/incidents/{incidents[0]['id']}/retry", json={"retries": 1}).status_code == 200
    worker.fetch_and_execute("charge", lambda task: task.complete({"receipt": "R-2"}))
    assert _instance(live, failing)["variables"]["receipt"] == "R-2"

    # a BPMN error is caught by the error boundary event (HTTP Basic with the token as password, this time)
    declined = _start(live, amount=9999)
    basic = _worker(live, "py-basic", auth_basic={"username": "worker", "password": live.tokens["worker"]})
    basic.fetch_and_execute("charge", lambda task: task.bpmn_error("CARD_DECLINED", "insufficient funds",
                                                                     {"reason": "funds"}))
    after = _instance(live, declined)
    assert after["status"] == "completed"
    assert after["variables"]["outcome"] == "declined" and after["variables"]["reason"] == "funds"
    trail = live.api("GET", f"/api/audit?instance_id={declined}", user="audrey").json()["items"]
    assert "external_task.bpmn_error" in [e["action"] for e in trail]


def test_the_client_extends_a_lock_and_is_refused_on_someone_elses_task(live):
    requests.post(live.url + "/api/deployments", headers={"Authorization": f"Bearer {live.tokens['dora']}"},
               files=[("files", ("payment.bpmn", _payment_process(), "application/xml"))], timeout=30)
    _start(live)
    config = {**CONFIG, "auth_bearer": {"access_token": live.tokens["worker"]}}
    client = ExternalTaskClient("a", live.url + "/engine-rest", config)
    [task] = client.fetch_and_lock("charge")
    r = live.api("POST", f"/engine-rest/external-task/{task['id']}/extendLock", user="worker",
                 json={"workerId": "a", "newDuration": 60_000})
    assert r.status_code == 204
    thief = ExternalTaskClient("b", live.url + "/engine-rest", config)
    with pytest.raises(Exception, match="409"):
        thief.complete(task["id"], {"x": 1})
    assert client.complete(task["id"], {"x": 1}) is True
