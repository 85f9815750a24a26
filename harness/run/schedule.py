"""How a cell's steps are laid out: warm-up steps and the timing window.

One place for the rule, so that the measured cell (``harness.run.cell``) and
the bare loop it is checked against (``harness.run.bare``) can never drift
apart: the overhead benchmark measures the rule the harness really uses.
"""

from __future__ import annotations

import math

#: a budgeted cell (the matrix on a CPU) keeps only this many synchronised warm-up steps
BUDGETED_WARMUP_STEPS = 2
#: the timing windows of a cell: one device sync per window, this many windows for ``steps`` steps
WINDOWS_PER_CELL = 20
#: untimed steps run with tracemalloc after the timing, for the leak attribution: a quarter of the
#: timed steps, at most HEAP_STEPS, at least HEAP_MIN_STEPS (BUDGETED_HEAP_MIN_STEPS in a budgeted cell,
#: where a 1.2 s conv step would otherwise make the heap phase longer than the timing)
HEAP_STEPS = 50
HEAP_MIN_STEPS = 10
BUDGETED_HEAP_MIN_STEPS = 4
#: a time budget never cuts the steady phase below this many steps
MIN_BUDGET_STEPS = 5
#: a heap step's time over a timed step's median, assumed when a budget plans the heap phase: the
#: CPU reference run (k=7, 2 cores) measured 0.93-1.22 for dense and conv-final in all five builds,
#: up to 1.77 for masked-multiomics' 18 ms steps, where the heap phase costs well under a second
HEAP_SLOWDOWN = 1.25
#: a budgeted cell keeps this share of the budget left after its warm-up for the leak phase, which runs
#: past its minimum only where its series is too noisy to catch a leak of 1.5 thresholds (rarely: its
#: samples follow a heap trim)
#: (``harness.run.phases.leak``); what it leaves unused goes back to the matrix's later cells
LEAK_BUDGET_SHARE = 0.15
#: seconds a cell spends after its last step (statistics, verdicts, the row), planned by a budget: the
#: CPU reference run's ``stats`` stretch took 0.7-1.6 s, most of it scipy.stats' import
TAIL_S = 1.5


def warmup_steps(steps: int, budgeted: bool = False) -> int:
    """Synchronised steps after the compile step and before the timing: 10% of the steps, 4 to 20."""
    return BUDGETED_WARMUP_STEPS if budgeted else max(4, min(20, steps // 10))


def steps_per_window(steps: int) -> int:
    """Steps timed together between two syncs, so that ``steps`` fill about ``WINDOWS_PER_CELL`` windows."""
    return max(1, steps // WINDOWS_PER_CELL)


def heap_steps(steps: int, budgeted: bool = False) -> int:
    """Untimed tracemalloc steps after ``steps`` timed ones (see ``HEAP_STEPS``)."""
    floor = BUDGETED_HEAP_MIN_STEPS if budgeted else HEAP_MIN_STEPS
    return min(HEAP_STEPS, max(floor, steps // 4))


def budgeted_steps(budget_s: float, elapsed_s: float, step_s: float, requested: int, *, timed_passes: int = 1,
                   untimed_steps: int = 0, heap: int | None = None) -> int:
    """Steady steps that fit what is left of a cell's time budget, from its warm-up step time ``step_s``.

    The budget is the cell's wall time, not its steady phase alone: the time already spent
    (import, build, compile, warm-up), the timed passes (two where ``device_step`` is timed apart),
    the untimed steps after them (``untimed_steps``: the loop's own warm-up and the memory phase),
    the heap phase (``heap`` steps, or ``heap_steps`` of the candidate) and ``TAIL_S`` are all paid
    from it. A matrix hands each cell its share of the run's budget (``harness.run.runner``), so a
    budget that planned the steady phase alone let every cell overrun its share: the CPU matrix took
    600 s of a 420 s budget and its last cells were cut to ``MIN_BUDGET_STEPS``. A leak confirmation,
    run only where the steady verdict is pending, comes on top: it is diagnosis, capped at the cell's
    budget (``confirmation_cap``).
    Never fewer than ``MIN_BUDGET_STEPS``, never more than ``requested``.
    """
    if step_s <= 0 or not math.isfinite(step_s):
        return requested
    left = budget_s - elapsed_s - TAIL_S
    for steps in range(requested, MIN_BUDGET_STEPS - 1, -1):
        n_heap = heap_steps(steps, budgeted=True) if heap is None else heap
        if step_s * (timed_passes * steps + untimed_steps + HEAP_SLOWDOWN * n_heap) <= left:
            return steps
    return min(requested, MIN_BUDGET_STEPS)


def confirmation_cap(task_cap_s: float | None, budget_s: float | None, default_s: float) -> float | None:
    """The time cap of a pending leak's confirmation: the task's own, else, in a budgeted cell, at most the
    cell's budget, else None (the default cap). A budgeted matrix hands each cell what is left, so an
    uncapped confirmation starves the cells after it: in a CPU main command flax dense b=512 confirmed for
    60 s (still not confirmed), and the five masked-multiomics cells at the end got the 5 s minimum (5 steps
    each, against 6-121 in a run without it)."""
    if task_cap_s is not None:
        return task_cap_s
    return min(default_s, float(budget_s)) if budget_s else None


def leak_cap_s(budget_s: float | None, elapsed_s: float, step_s: float, steps_after: float) -> float | None:
    """Seconds a budgeted cell's leak phase may run: its budget less what is spent (``elapsed_s``), the
    ``steps_after`` it (heap steps at ``HEAP_SLOWDOWN``, the memory phase's) at ``step_s``, and ``TAIL_S``;
    None outside a budget (the phase's own cap applies)."""
    if not budget_s:
        return None
    per = step_s if step_s > 0 and math.isfinite(step_s) else 0.0
    return max(0.0, float(budget_s) - elapsed_s - per * steps_after - TAIL_S)
