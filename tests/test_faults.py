"""No diagram, expression or data gets a 500 (issue 8, item 6): a 4xx at deploy naming file, element
and line, or a 422 at run time naming the element, with the instance left as it was.

The reproductions live in ``tests/data/``; every BPMN file there and under ``processes/`` is
deployed and started through the API.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.bpmnkit import CAMUNDA, Bpmn
from tests.helpers import snapshot

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def _bundles() -> list[tuple[str, list[Path]]]:
    """Each BPMN file with the DMN files of its folder (as ``sopflow deploy`` bundles them)."""
    bundles = []
    for folder in (DATA, ROOT / "processes"):
        dmn = sorted(folder.rglob("*.dmn"))
        for bpmn in sorted(folder.rglob("*.bpmn")):
            bundles.append((str(bpmn.relative_to(ROOT)), [bpmn, *[d for d in dmn if d.parent == bpmn.parent]]))
    return bundles


def _deploy_files(api, files: list[Path]):
    return api.deploy("dora", *[(f.name, f.read_bytes()) for f in files])


def test_the_reproductions_are_there():
    names = {p.name for p in DATA.glob("*.bpmn")}
    assert {"mi_camunda_collection_expression.bpmn", "mi_camunda_no_collection.bpmn",
            "adhoc_spiff_data_object.bpmn"} <= names


def test_every_bpmn_file_deploys_and_starts_without_a_5xx(api):
    """Deploy, start (with no variables), and complete the first open task of every shipped and test diagram."""
    outcomes = {}
    for name, files in _bundles():
        deployed = _deploy_files(api, files)
        outcomes[name] = [("deploy", deployed.status_code)]
        assert deployed.status_code < 500, (name, deployed.text)
        if deployed.status_code >= 300:
            body = deployed.json()
            assert body["detail"] and body.get("file"), (name, body)  # says which file (and what is wrong)
            continue
        for definition in deployed.json()["definitions"]:
            started = api.start("admin", definition["key"])
            outcomes[name].append(("start", started.status_code))
            assert started.status_code < 500, (name, started.text)
            if started.status_code >= 300:
                assert started.json().get("element_id") or started.status_code != 422, (name, started.text)
                continue
            tasks = api.inbox("admin", process_instance_id=started.json()["id"], include_assigned=True)
            if tasks:
                done = api.post("admin", f"/api/tasks/{tasks[0]['id']}/complete", json={"variables": {}})
                outcomes[name].append(("complete", done.status_code))
                assert done.status_code < 500, (name, done.text)
    assert len(outcomes) >= 8, outcomes


# ------------------------------------------------------------------ multi-instance collections


def _file(name: str) -> tuple[str, bytes]:
    return name, (DATA / name).read_bytes()


def test_camunda_collection_expression_runs_one_task_per_item(api):
    assert api.deploy("dora", _file("mi_camunda_collection_expression.bpmn")).status_code == 201
    started = api.start("admin", "mi_collection_expression", variables={"approvers": ["max", "fiona"]})
    assert started.status_code == 201, started.text
    tasks = api.inbox("admin", process_instance_id=started.json()["id"], include_assigned=True)
    assert len(tasks) == 2
    for task in tasks:
        done = api.post("admin", f"/api/tasks/{task['id']}/complete", json={"variables": {}})
        assert done.status_code == 200, done.text
    assert done.json()["status"] == "completed"


@pytest.mark.parametrize("variables", [{}, {"approvers": None}, {"approvers": 3}])
@pytest.mark.parametrize("file", ["mi_camunda_collection_expression.bpmn", "mi_camunda_collection_name.bpmn"])
def test_a_missing_or_null_collection_is_a_422_naming_the_element(api, variables, file):
    assert api.deploy("dora", _file(file)).status_code == 201
    key = {"mi_camunda_collection_expression.bpmn": "mi_collection_expression"}.get(file, "mi_collection_name")
    before = snapshot(api.db)
    started = api.start("admin", key, variables=variables)
    assert started.status_code == 422, started.text
    body = started.json()
    assert body["element_id"] == "approve" and body["variable"] == "approvers"
    assert "give 'approvers' a list" in body["detail"]
    assert snapshot(api.db) == before


def test_a_spiff_collection_that_is_missing_is_a_422(api):
    assert api.deploy("dora", _file("mi_spiff_collection.bpmn")).status_code == 201
    started = api.start("admin", "mi_spiff_collection")
    assert started.status_code == 422 and started.json()["element_id"] == "report", started.text
    ok = api.start("admin", "mi_spiff_collection", variables={"sites": ["North", "Harbour", "Depot"]})
    assert ok.status_code == 201
    assert len(api.inbox("admin", process_instance_id=ok.json()["id"], include_assigned=True)) == 3


@pytest.mark.parametrize("file", ["mi_camunda_no_collection.bpmn", "mi_spiff_no_collection.bpmn"])
def test_a_multi_instance_without_a_collection_is_refused_at_deploy(api, file):
    refused = api.deploy("dora", _file(file))
    assert refused.status_code == 422, refused.text
    assert refused.json()["file"] == file


def test_a_collection_expression_sopflow_cannot_evaluate_is_refused_at_deploy(api):
    b = Bpmn("mi_bean", dialect="camunda").start().raw(
        '<bpmn:userTask id="approve" name="Approve">'
        '<bpmn:multiInstanceLoopCharacteristics camunda:collection="${order.getApprovers()}" '
        'camunda:elementVariable="approver"/></bpmn:userTask>').end()
    xml = b.chain("start", "approve", "end").xml()
    assert CAMUNDA.encode() in xml
    refused = api.deploy("dora", ("bean.bpmn", xml))
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert body["element_id"] == "approve" and body["file"] == "bean.bpmn" and body["line"] >= 1
    assert "camunda:collection" in body["detail"] and "earlier step" in body["detail"]


# ------------------------------------------------------------------ ad-hoc sub-processes


def test_an_ad_hoc_sub_process_with_a_data_object_deploys_and_runs(api):
    deployed = api.deploy("dora", _file("adhoc_spiff_data_object.bpmn"))
    assert deployed.status_code == 201, deployed.text
    started = api.start("admin", "adhoc_spiff_data")
    assert started.status_code == 201, started.text
    [task] = api.inbox("admin", process_instance_id=started.json()["id"], include_assigned=True)
    done = api.post("admin", f"/api/tasks/{task['id']}/complete", json={"variables": {}})
    assert done.status_code == 200 and done.json()["status"] == "completed", done.text
    assert done.json()["variables"]["score"] == 1


def test_an_ad_hoc_sub_process_ends_when_its_activities_are_done(api):
    assert api.deploy("dora", _file("adhoc_spiff.bpmn")).status_code == 201
    started = api.start("admin", "adhoc_spiff")
    tasks = api.inbox("admin", process_instance_id=started.json()["id"], include_assigned=True)
    assert sorted(t["element_id"] for t in tasks) == ["check_address", "check_id"]
    first = api.post("admin", f"/api/tasks/{tasks[0]['id']}/complete", json={"variables": {}})
    assert first.status_code == 200 and first.json()["status"] == "running", first.text
    second = api.post("admin", f"/api/tasks/{tasks[1]['id']}/complete", json={"variables": {}})
    assert second.status_code == 200 and second.json()["status"] == "completed", second.text


# ------------------------------------------------------------------ any other SpiffWorkflow fault


def test_an_unexpected_error_inside_a_spec_is_a_422_naming_the_element_and_logged(api, monkeypatch, caplog):
    """SpiffWorkflow raising a plain TypeError/KeyError while it runs an element: the diagram's fault, a 422."""
    from SpiffWorkflow.bpmn.specs.mixins.exclusive_gateway import ExclusiveGateway

    b = Bpmn("gw").start().xor("decide", default="f_no").user("yes").user("no").end()
    b.chain("start", "decide").flow("decide", "yes", "amount > 10").flow("decide", "no", id="f_no")
    xml = b.flow("yes", "end").flow("no", "end").xml()
    assert api.deploy("dora", ("gw.bpmn", xml)).status_code == 201

    def broken(self, my_task):
        raise KeyError("amount")

    monkeypatch.setattr(ExclusiveGateway, "_run_hook", broken)
    before = snapshot(api.db)
    with caplog.at_level(logging.WARNING, logger="sopflow.engine"):
        started = api.start("admin", "gw", variables={"amount": 5})
    assert started.status_code == 422, started.text
    assert started.json()["element_id"] == "decide" and "KeyError" in started.json()["detail"]
    assert snapshot(api.db) == before
    logged = [r for r in caplog.records if r.name == "sopflow.engine"]
    assert logged and logged[0].exc_info is not None  # our bug or theirs, the traceback is in the log


def test_a_command_over_budget_is_a_422_that_wrote_nothing(api, monkeypatch):
    b = Bpmn("spin").start().script("s1", "x = 1").xor("again", default="f_out").end()
    b.chain("start", "s1", "again").flow("again", "s1", "True").flow("again", "end", id="f_out")
    assert api.deploy("dora", ("spin.bpmn", b.xml())).status_code == 201
    api.client.app.state.settings = type(api.client.app.state.settings)(command_max_steps=200)
    before = snapshot(api.db)
    started = api.start("admin", "spin")
    assert started.status_code == 422, started.text
    assert started.json()["code"] == "budget_exceeded" and "200 engine steps" in started.json()["detail"]
    assert snapshot(api.db) == before


def test_a_bug_in_sopflow_itself_is_not_blamed_on_the_diagram(db, clock, monkeypatch, caplog):
    """Our own code failing while the engine runs stays an error (logged with its traceback), not a 422."""
    from engine import execution
    from engine.commands import start_instance
    from tests.helpers import ALICE, deploy_xml

    b = Bpmn("plain").start().script("s", "x = 1").user("u").end()
    deploy_xml(db, b.chain("start", "s", "u", "end").xml())

    def buggy_prune_tree(workflow, removed):
        execution._finished(None)  # raises AttributeError inside engine/execution.py, as a real bug would

    monkeypatch.setattr(execution, "_prune_tree", buggy_prune_tree)
    with caplog.at_level(logging.ERROR, logger="sopflow.engine"), pytest.raises(AttributeError, match="has_state"):
        db.command(lambda s: start_instance(s, key="plain", actor=ALICE))
    assert any(r.exc_info for r in caplog.records if r.name == "sopflow.engine")
