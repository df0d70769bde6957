"""Engine commands, one module per family around the shared unit of work (``unit``).

- ``deployments``: deploy a bundle of BPMN/DMN files as versioned definitions
- ``instances``: start and cancel process instances
- ``tasks``: claim, unclaim, assign and complete user tasks
- ``messages``: correlate a message to waiting instances, or start one
- ``timers``: fire an instance's due timers
- ``external_tasks``: fetch-and-lock, complete, fail, BPMN error, extend lock; retries and incidents
  (imported as a module: ``from engine.commands import external_tasks``)
- ``sla``: fire SLA jobs (at risk, breach, reminder; escalation) and the SLA reports
- ``clock_control``: the admin clock (``SOPFLOW_CLOCK_CONTROL=1``)
"""
from engine.actor import SYSTEM, Actor
from engine.commands.deployments import DeployResult, deploy
from engine.commands.instances import cancel_instance, latest_definition, start_instance
from engine.commands.messages import correlate_message
from engine.commands.tasks import (
    assign_task,
    claim_task,
    complete_task,
    get_task_row,
    is_candidate,
    may_work_on,
    unclaim_task,
)
from engine.commands.timers import fire_timers
from engine.commands.unit import instance_variables

__all__ = [
    "SYSTEM", "Actor", "DeployResult", "assign_task", "cancel_instance", "claim_task", "complete_task",
    "correlate_message", "deploy", "fire_timers", "get_task_row", "instance_variables", "is_candidate",
    "latest_definition", "may_work_on", "start_instance", "unclaim_task",
]
