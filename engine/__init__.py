"""sopflow's domain core: BPMN loading, the unit of work, projections, audit, sandbox.

Nothing in this package knows about HTTP. Importing it installs the clock seam into
SpiffWorkflow's timer model (see :mod:`engine.clock`) and sopflow's changes to
SpiffWorkflow's behaviour (see :mod:`engine.spiff_patches`).
"""
from engine import clock as _clock  # noqa: F401  (installs the timer clock seam)
from engine import spiff_patches as _spiff_patches  # noqa: F401  (iterative task prediction)
