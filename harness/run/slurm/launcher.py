"""The matrix on Slurm, end to end: what ``harness.run.runner.run_matrix`` is for the local launcher.

In order, all under the run's lock: merge the parts a died submitting process left (``--resume``), plan which cells
run (the same ``plan_resume`` as the local launcher, so a cell is done, retried or new by the same rule), take each
cell's preflight here (a cell it skips gets its row without a job), check the node's Python with one tiny job,
wait again on jobs a died submitting process left queued, submit the rest as job arrays, and collect one row per
cell. An interrupt leaves the jobs running: their rows wait in part files for ``--resume``.
"""

from __future__ import annotations

import sys
from typing import Any

from harness.run.slurm.collect import Submitted, collect, say
from harness.run.slurm.node import NodeCell, row_base
from harness.run.slurm.params import SlurmOptions
from harness.run.slurm.parts import merge_leftovers, part_path
from harness.run.slurm.submit import recorded, slurm_dir, submit_cells
from harness.store import StoreError


class SlurmCheckFailed(StoreError):
    """The node's Python cannot import what the cells need, or the check job did not run: one line, exit 2."""


def still_queued(cells: list, store) -> dict[str, Submitted]:
    """Cells of ``cells`` whose job (from the run's job list) Slurm still holds: waited on, not submitted again."""
    from harness.run.slurm.states import queued_states

    jobs = recorded(slurm_dir(store.root, store.run_id))
    if not jobs:
        return {}
    queued = queued_states() or {}
    keys = {c.key for c in cells}
    return {k: j for k, j in jobs.items() if k in keys and j.job_id in queued and queued[j.job_id].active}


def run_matrix_slurm(cells: list, store, options: SlurmOptions, resume: bool = False, preflight=None,
                     budget_s: float | None = None, runnable: set[str] | None = None, keep_failed: bool = False,
                     peak: bool = False, memory_limit_bytes: int | None = None, progress: bool = True,
                     check=None) -> list[dict[str, Any]]:
    """Run every cell not already done in ``store`` on Slurm and return the new rows (see the module's doc).
    ``check`` replaces the node-Python check job (a test's stand-in); raises :class:`SlurmCheckFailed`. SIGTERM
    ends the wait as Ctrl-C does (KeyboardInterrupt), the jobs left running."""
    import signal

    from harness.run.compile_cache import cache_dir
    from harness.run.runner import _sigterm_to_interrupt, store_or_stop

    previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        with store.writing():
            def append(row: dict[str, Any]) -> None:
                store_or_stop(store, row, cache_dir(store.root, store.run_id))

            rows = merge_leftovers(store, append) if resume else []
            work, rows_here = _plan(cells, store, resume, preflight, budget_s, runnable, keep_failed, peak,
                                    memory_limit_bytes, append)
            rows += rows_here
            if not work:
                return rows
            folder = slurm_dir(store.root, store.run_id)
            waiting = still_queued([nc.cell for nc, _ in work], store) if resume else {}
            if waiting:
                print(f"slurm: waiting on {len(waiting)} cell(s) whose jobs a previous submitting process left "
                      f"queued", file=sys.stderr)
            if resume:  # a job that ended since the first merge left its part: its cell is not submitted again
                late = merge_leftovers(store, append)
                rows += late
                landed = {r.get("cell_key") for r in late if r.get("status") != "failed"}
                waiting = {k: j for k, j in waiting.items() if k not in landed}
                work = [(nc, base) for nc, base in work if nc.cell.key not in landed]
            to_submit = [(nc, base) for nc, base in work if nc.cell.key not in waiting]
            if to_submit:
                problem = (check or _check)(sorted({nc.cell.impl for nc, _ in to_submit}), options, folder)
                if problem:
                    raise SlurmCheckFailed(problem)
            submitted = list(waiting.values()) + (submit_cells(to_submit, folder, options, store.run_id)
                                                  if to_submit else [])
            rows += collect(store, submitted, append, died_wait_s=options.died_wait_s, poll_s=options.poll_s,
                            on_row=say if progress else None)
            return rows
    finally:
        signal.signal(signal.SIGTERM, previous)


def _plan(cells, store, resume, preflight, budget_s, runnable, keep_failed, peak, memory_limit_bytes, append):
    """The cells to submit, each with its preflight verdict, budget share and part path; a cell preflight skips
    gets its row here (no job). Returns ``(work, rows written)``."""
    from harness.run.compile_cache import make_cache_dir
    from harness.run.runner import MIN_CELL_BUDGET_S, plan_resume

    todo = plan_resume(cells, store, keep_failed).todo if resume else list(cells)
    if not todo:
        return [], []
    try:
        shared_cache = make_cache_dir(store.root, store.run_id)
    except OSError as exc:
        raise StoreError(str(exc)) from exc
    # each cell gets the share the local launcher would give it: the same steps, measured in parallel
    share = budget_s / max(1, len([c for c in todo if runnable is None or c.key in runnable])) if budget_s else None
    work: list[tuple[NodeCell, dict[str, Any]]] = []
    rows: list[dict[str, Any]] = []
    for cell in todo:
        cell.compile_cache = cell.compile_cache or shared_cache
        if share and (runnable is None or cell.key in runnable):
            cell.time_budget_s = round(max(MIN_CELL_BUDGET_S, share), 1)
        verdict = preflight(cell) if preflight is not None else None
        base = row_base(cell, verdict)
        if verdict is not None and verdict.get("skip"):
            row = skipped_row(base, verdict)
            append(row)
            rows.append(row)
            continue
        work.append((NodeCell(cell, verdict, str(part_path(store.root, store.run_id, cell.key)), peak,
                              memory_limit_bytes), base))
    return work, rows


def skipped_row(base: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """The row of a cell its preflight skips: written by the submitting process, no job submitted."""
    return {**base, "status": "skipped", "failure_kind": "skipped", "failure_message": verdict["reason"],
            "stderr_tail": [], "wall_s": 0.0}


def _check(impls: list[str], options: SlurmOptions, folder) -> str | None:
    from harness.run.slurm.cluster_check import check_node_python

    return check_node_python(impls, options, folder)


def slurm_cell_runner(store, options: SlurmOptions, preflight=None, peak: bool = False,
                      memory_limit_bytes: int | None = None, check=None):
    """One cell at a time on Slurm, its row returned unstored: a probe of ``sweep`` (each probe's batch depends on
    the one before, so probes cannot be one array). The node's Python is checked once, before the first job."""
    from harness.run.compile_cache import make_cache_dir

    checked: set[str] = set()

    def run(cell) -> dict[str, Any]:
        verdict = preflight(cell) if preflight is not None else None
        base = row_base(cell, verdict)
        if verdict is not None and verdict.get("skip"):
            return skipped_row(base, verdict)
        folder = slurm_dir(store.root, store.run_id)
        if cell.impl not in checked:
            problem = (check or _check)([cell.impl], options, folder)
            if problem:
                raise SlurmCheckFailed(problem)
            checked.add(cell.impl)
        cell.compile_cache = cell.compile_cache or make_cache_dir(store.root, store.run_id)
        node = NodeCell(cell, verdict, str(part_path(store.root, store.run_id, cell.key)), peak, memory_limit_bytes)
        out: list[dict[str, Any]] = []
        collect(store, submit_cells([(node, base)], folder, options, store.run_id), out.append,
                died_wait_s=options.died_wait_s, poll_s=options.poll_s)
        return out[0]

    return run
