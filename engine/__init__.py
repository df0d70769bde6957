"""sopflow's domain core: BPMN loading, the unit of work, projections, audit, sandbox.

Nothing in this package knows about HTTP. Importing it installs the clock seam into
SpiffWorkflow's timer model (see :mod:`engine.clock`).
"""
from engine import clock as _clock  # noqa: F401  (installs the timer clock seam)
