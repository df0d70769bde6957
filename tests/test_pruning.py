"""History pruning must not change what a process does.

Each scenario runs twice on the same diagram: once in plain SpiffWorkflow (in memory,
``do_engine_steps``, full history), once the way sopflow runs it (pruned after every
round, serialized and restored between steps). The user tasks offered, in order, and
the final data must be identical; and the pruned tree must stay small.
"""
from __future__ import annotations

from datetime import timedelta

import pytest
from SpiffWorkflow.util.task import TaskState

from engine import execution, serialization, variables
from engine.config import Settings
from engine.loading import UploadedFile, parse_bundle
from tests.bpmnkit import Bpmn

LOOPS = 4


def _loop_tail(b: Bpmn, last: str, inc: str = "count = count + 1") -> Bpmn:
    """last -> count += 1 -> back to 'first' while count < loops."""
    b.script("inc", inc).xor("more", default="f_done").end()
    b.flow(last, "inc").flow("inc", "more").flow("more", "first", condition=f"count < {LOOPS}")
    return b.flow("more", "end", id="f_done")


def parallel_loop() -> bytes:
    b = Bpmn("par").start().script("init", "count = 0").parallel("first").user("a").user("b").parallel("join")
    b.chain("start", "init", "first").flow("first", "a").flow("first", "b").flow("a", "join").flow("b", "join")
    return _loop_tail(b, "join").xml()


def inclusive_loop() -> bytes:
    b = (Bpmn("inc").start().script("init", "count = 0").inclusive("first", default="f_c").user("a").user("b")
         .user("c").inclusive("join"))
    b.chain("start", "init", "first")
    b.flow("first", "a", condition="count % 2 == 0").flow("first", "b", condition="True").flow("first", "c", id="f_c")
    b.flow("a", "join").flow("b", "join").flow("c", "join")
    return _loop_tail(b, "join").xml()


def boundary_loop() -> bytes:
    b = (Bpmn("bnd").start().script("init", "count = 0").user("first", "Work")
         .boundary_timer("remind", "first", duration='"PT1H"', interrupting=False)
         .script("note", "reminded = count").end("remind_end")
         .boundary_timer("breach", "first", duration='"PT3H"').script("late", "late = count").xor("rejoin"))
    b.chain("start", "init", "first", "rejoin").chain("remind", "note", "remind_end").chain("breach", "late", "rejoin")
    return _loop_tail(b, "rejoin").xml()


def call_loop() -> tuple[bytes, bytes]:
    child = Bpmn("child").start().user("inner").script("mark", "inner_done = True").end()
    child.chain("start", "inner", "mark", "end")
    b = Bpmn("caller").start().script("init", "count = 0").call("first", "child")
    b.chain("start", "init", "first")
    return _loop_tail(b, "first").xml(), child.xml()


def subprocess_loop() -> bytes:
    inner = ('<bpmn:subProcess id="first"><bpmn:startEvent id="ss"/><bpmn:userTask id="inner"/>'
             '<bpmn:parallelGateway id="ps"/><bpmn:userTask id="x"/><bpmn:userTask id="y"/>'
             '<bpmn:parallelGateway id="pj"/><bpmn:endEvent id="se"/>'
             + "".join(f'<bpmn:sequenceFlow id="sf{i}" sourceRef="{a}" targetRef="{c}"/>' for i, (a, c) in enumerate(
                 [("ss", "inner"), ("inner", "ps"), ("ps", "x"), ("ps", "y"), ("x", "pj"), ("y", "pj"), ("pj", "se")]))
             + "</bpmn:subProcess>")
    b = Bpmn("sub").start().script("init", "count = 0").raw(inner)
    b.chain("start", "init", "first")
    return _loop_tail(b, "first").xml()


def multi_instance_loop() -> bytes:
    mi = ('<bpmn:userTask id="first"><bpmn:multiInstanceLoopCharacteristics>'
          '<bpmn:loopDataInputRef>reviewers</bpmn:loopDataInputRef>'
          '<bpmn:inputDataItem id="reviewer" name="reviewer"/>'
          '</bpmn:multiInstanceLoopCharacteristics></bpmn:userTask>')
    b = Bpmn("mi").start().script("init", "count = 0\nreviewers = ['ann', 'ben', 'cat']").raw(mi)
    b.chain("start", "init", "first")
    # plain SpiffWorkflow merges the input item into the data, and it must not be there when the next
    # round starts; in sopflow it is local to each instance and never reaches the process variables
    return _loop_tail(b, "first", inc="count = count + 1\nreviewer = None\ndel reviewer").xml()


def _specs(xml: bytes, extra: bytes | None = None) -> serialization.Specs:
    files = [UploadedFile("main.bpmn", xml)] + ([UploadedFile("extra.bpmn", extra)] if extra else [])
    bundle = parse_bundle(files, Settings())
    main = next(p for p in bundle.processes if p.resource_name == "main.bpmn")
    return serialization.Specs(bundle.dialect, main.spec, main.subprocess_specs)


def _drive(specs: serialization.Specs, clock, *, sopflow: bool, timers_at: dict[int, timedelta] | None = None):
    wf = serialization.new_workflow(specs)
    budget = lambda: execution.EngineBudget(100_000, 60)  # noqa: E731

    def advance():
        if sopflow:
            execution.run_engine(wf, budget())
        else:
            wf.do_engine_steps()

    advance()
    trace, sizes = [], []
    for step in range(200):
        if sopflow:
            wf = serialization.load_state(serialization.dump_state(specs, wf), specs)
            sizes.append(len(wf.tasks) + sum(len(s.tasks) for s in wf.subprocesses.values()))
        if timers_at and step in timers_at:
            clock.advance(timers_at[step])
            wf.refresh_timers()
            advance()
        ready = sorted(wf.get_tasks(state=TaskState.READY, manual=True),
                       key=lambda t: (t.task_spec.bpmn_id, str(t.data.get("reviewer", ""))))
        if not ready:
            break
        task = ready[0]
        trace.append(task.task_spec.bpmn_id)
        if sopflow:  # as complete_task does: the task runs on the process variables
            variables.before_run(task)
        task.data[f"seen_{task.task_spec.bpmn_id}"] = step
        task.run()
        advance()
    data = dict(variables.process_variables(wf)) if sopflow else dict(wf.data)
    return trace, wf.is_completed(), data, sizes


SCENARIOS = {
    "parallel-join": (parallel_loop, None),
    "boundary-timers": (boundary_loop, {1: timedelta(hours=2), 5: timedelta(hours=4)}),
    "call-activity": (call_loop, None),
    "embedded-subprocess-with-join": (subprocess_loop, None),
    "multi-instance": (multi_instance_loop, None),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_pruned_run_matches_plain_spiffworkflow(name, clock):
    build, timers = SCENARIOS[name]
    built = build()
    xml, extra = built if isinstance(built, tuple) else (built, None)
    specs = _specs(xml, extra)
    start = clock.now()
    plain = _drive(specs, clock, sopflow=False, timers_at=timers)
    clock.set(start)
    pruned = _drive(specs, clock, sopflow=True, timers_at=timers)
    assert pruned[0] == plain[0], "the same user tasks, in the same order"
    assert plain[1] and pruned[1], "both runs end"
    # the same final data, except where plain SpiffWorkflow's joins revert a value: each user task
    # wrote seen_<element> = step, and in sopflow the latest write wins (process variables)
    latest = {f"seen_{element}": step for step, element in enumerate(pruned[0])}
    assert pruned[2] == {**plain[2], **latest}, "the same final data, with every latest write"
    assert len(plain[0]) >= LOOPS
    assert max(pruned[3]) < 40, "the pruned tree stays bounded by the diagram, not the history"


def test_tree_size_is_flat_over_a_long_loop(clock):
    b = Bpmn("long").start().script("init", "count = 0").user("first")
    b.chain("start", "init", "first")
    b.script("inc", "count = count + 1").xor("more", default="f_done").end()
    b.flow("first", "inc").flow("inc", "more").flow("more", "first", condition="count < 1000")
    specs = _specs(b.flow("more", "end", id="f_done").xml())
    trace, done, data, sizes = _drive(specs, clock, sopflow=True)
    assert len(trace) == 200 and sizes[10] == sizes[199]


def test_inclusive_join_in_a_loop_runs_where_plain_spiffworkflow_crashes(clock):
    """SpiffWorkflow 3.2 alone fails this diagram (a finished older join token loses its parent);
    with history pruned the loop runs: a and b when count is even, b alone when odd."""
    specs = _specs(inclusive_loop())
    with pytest.raises(AttributeError):
        _drive(specs, clock, sopflow=False)
    trace, done, data, sizes = _drive(specs, clock, sopflow=True)
    assert trace == ["a", "b", "b", "a", "b", "b"]
    assert done and data["count"] == LOOPS
    assert max(sizes) < 40
