"""The cell's layout under a time budget (``harness.run.schedule``): the budget is the cell's wall
time, so what runs after the timing is planned from it too, and a budgeted cell keeps to its share."""

from __future__ import annotations

import pytest

from harness.run.phases.leak import LEAK_MIN_STEPS
from harness.run.runner import plan_cells, run_matrix
from harness.run.schedule import (
    BUDGETED_HEAP_MIN_STEPS,
    HEAP_MIN_STEPS,
    HEAP_SLOWDOWN,
    HEAP_STEPS,
    MIN_BUDGET_STEPS,
    TAIL_S,
    budgeted_steps,
    confirmation_cap,
    heap_steps,
    leak_cap_s,
)
from harness.spec.presets import resolve_spec
from harness.store import ResultStore

PLANTED = "tests/fixtures/planted.py:"


def test_heap_steps_are_a_quarter_of_the_timed_ones_within_their_bounds():
    assert heap_steps(1000) == HEAP_STEPS
    assert heap_steps(100) == 25
    assert heap_steps(8) == HEAP_MIN_STEPS
    assert heap_steps(8, budgeted=True) == BUDGETED_HEAP_MIN_STEPS


def test_the_budget_pays_for_the_phases_after_the_timing():
    # 20 s budget, 5 s spent, 0.1 s steps: 14 s left after the tail; steady s + 5 untimed + 1.25 x s/4 heap
    steps = budgeted_steps(20.0, 5.0, 0.1, 1000, untimed_steps=5)
    cost = 0.1 * (steps + 5 + HEAP_SLOWDOWN * heap_steps(steps, budgeted=True))
    assert cost <= 20.0 - 5.0 - TAIL_S
    one_more = 0.1 * (steps + 1 + 5 + HEAP_SLOWDOWN * heap_steps(steps + 1, budgeted=True))
    assert one_more > 20.0 - 5.0 - TAIL_S
    # a steady-only plan would have taken int(15 / 0.1) = 150 steps and overrun by the heap phase
    assert steps < 150


def test_a_second_timed_pass_halves_the_steady_steps_and_requested_steps_cap_them():
    one = budgeted_steps(60.0, 0.0, 0.1, 10_000, heap=0)
    two = budgeted_steps(60.0, 0.0, 0.1, 10_000, heap=0, timed_passes=2)
    assert abs(one - (60.0 - TAIL_S) / 0.1) <= 1
    assert abs(two - one / 2) <= 1
    assert budgeted_steps(60.0, 0.0, 0.1, 40) == 40


def test_an_overspent_budget_keeps_the_minimum_and_no_step_time_keeps_the_request():
    assert budgeted_steps(10.0, 30.0, 1.0, 200) == MIN_BUDGET_STEPS
    assert budgeted_steps(10.0, 30.0, 1.0, 3) == 3
    assert budgeted_steps(10.0, 1.0, 0.0, 200) == 200
    assert budgeted_steps(10.0, 1.0, float("nan"), 200) == 200


@pytest.mark.worker
def test_a_budgeted_cell_ends_within_its_budget(tmp_path):
    """A real worker whose step is a 50 ms sleep (little CPU, so a loaded machine moves it little): the
    whole cell keeps to its budget. Planning the steady phase alone would have run about 148 steady steps,
    then 37 heap steps, 3 memory steps and the statistics on top: some 40% over."""
    spec = resolve_spec("dense", kmer=3)
    budget = 8.0
    cells = plan_cells([PLANTED + "SlowVAE"], [spec], 3, [32], timeout_s=300.0, steps=100_000,
                       time_budget_s=budget)
    (row,) = run_matrix(cells, ResultStore(tmp_path, "budget"), progress=False, peak=False)
    assert row["status"] == "ok", row["failure_message"]
    assert MIN_BUDGET_STEPS < row["steps_measured"] < 100_000
    wb = row["wall_breakdown"]
    # process start and the exit are outside the worker's clock; the rest is within the budget
    inside = wb["total"] - wb["process_start"] - wb.get("exit", 0.0)
    assert inside <= budget * 1.2, wb
    assert len(row["host"]["heap_bytes"]) == heap_steps(row["steps_measured"], budgeted=True)
    # the leak phase ran within the budget too: its minimum, and its series judged
    phase = row["leak"]["phase"]
    assert LEAK_MIN_STEPS <= phase["steps"] and phase["cap_s"] is not None
    assert phase["seconds"] <= max(phase["cap_s"], LEAK_MIN_STEPS * 0.05 * 1.5) + 1.0, phase
    assert row["leak"]["judged_steps"] == phase["steps"] - phase["warmup"]


def test_the_leak_phase_gets_what_the_budget_leaves_after_the_phases_behind_it():
    # 21 s budget, 12 s spent, 0.5 s steps, 5 heap steps at 1.25 and 3 memory steps after it, the tail
    assert leak_cap_s(21.0, 12.0, 0.5, HEAP_SLOWDOWN * 5 + 3) == pytest.approx(21.0 - 12.0 - 0.5 * 9.25 - TAIL_S)
    assert leak_cap_s(21.0, 30.0, 0.5, 8) == 0.0  # overspent: nothing, and the phase runs its minimum
    assert leak_cap_s(None, 12.0, 0.5, 8) is None  # unbudgeted: the phase's own cap
    assert leak_cap_s(21.0, 12.0, float("nan"), 8) == pytest.approx(21.0 - 12.0 - TAIL_S)


def test_a_budgeted_cells_confirmation_is_capped_by_its_budget():
    assert confirmation_cap(None, 21.0, 60.0) == 21.0
    assert confirmation_cap(None, 90.0, 60.0) == 60.0
    assert confirmation_cap(None, None, 60.0) is None  # unbudgeted: the default cap
    assert confirmation_cap(3.0, 21.0, 60.0) == 3.0  # the task's own cap wins
