"""How a cell's steps are laid out: warm-up steps and the timing window.

One place for the rule, so that the measured cell (``harness.run.cell``) and
the bare loop it is checked against (``harness.run.bare``) can never drift
apart: the overhead benchmark measures the rule the harness really uses.
"""

from __future__ import annotations

#: a budgeted cell (the matrix on a CPU) keeps only this many synchronised warm-up steps
BUDGETED_WARMUP_STEPS = 2
#: the timing windows of a cell: one device sync per window, this many windows for ``steps`` steps
WINDOWS_PER_CELL = 20


def warmup_steps(steps: int, budgeted: bool = False) -> int:
    """Synchronised steps after the compile step and before the timing: 10% of the steps, 4 to 20."""
    return BUDGETED_WARMUP_STEPS if budgeted else max(4, min(20, steps // 10))


def steps_per_window(steps: int) -> int:
    """Steps timed together between two syncs, so that ``steps`` fill about ``WINDOWS_PER_CELL`` windows."""
    return max(1, steps // WINDOWS_PER_CELL)
