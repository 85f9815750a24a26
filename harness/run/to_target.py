"""A whole training run to the target, timed end to end: what the separable time to target stands for.

``harness.diagnose.target`` computes the time to a target as ``compile + (steps - 1) x mean step`` from a cell and
a curve measured apart. This module measures the thing itself, so ``python -m bench target-check`` can show the
shortcut holds: a fresh worker builds the model from the canonical weights, trains on the curve's batches with the
curve's noise (``harness.run.curve_data``, ``harness.run.curves.step_noise``: the reference's path, so an impl that
trains the same reaches the target at the reference's step) and reads the held-out reconstruction at the curve's
probe steps (``harness.run.curves.probe_due``), stopping at the first reading that meets the target.

What the clock covers: every training step, the first (which compiles) included, each segment between two readings
closed by a device sync. What it leaves out: the held-out reading between segments (the separable figure counts
no evaluation either), and the segment's batches and noise, made ready before its clock starts, as a prefetching
loader makes them ready (the cell readies its windows' batches off the clock the same way,
``harness.run.windows``).

**glibc's heap.** The held-out readings are the harness's own numpy (float64 copies of the outputs, a megabyte
each at k=5), not a user's in-framework evaluation. Their temporaries moved glibc's dynamic mmap threshold and let
it trim the heap, and a fresh torch worker's next training steps faulted the returned pages back in: dense, k=5,
batch 64 ran 23-26 ms a step against 18-20 ms in the cell (whose steady loop has no readings between its steps)
and in the same loop with glibc's thresholds fixed. So the direct runs fix them (``DIRECT_RUN_ENV``: the mmap
threshold at glibc's 32 MiB cap, no trim), the state a long-running process reaches once its first large block is
freed; with them the same runs took 19-23 ms a step.

The parent side (``run_to_target``) is framework-free; ``task_to_target`` runs in the worker.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.run.launch import run_worker
from harness.run.parity import worker_error_line
from harness.run.task import ToTargetTask
from harness.spec.schema import VAESpec

#: glibc settings of the direct runs' workers (see the module docstring): blocks under 32 MiB from the heap, and the
#: heap never trimmed, so the harness's numpy readings do not make the training steps fault pages back in
DIRECT_RUN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}


@dataclass(frozen=True)
class DirectRun:
    """One whole run to the target: ``train_s`` on the clock, the first step alone, and the steps it took
    (None: not reached within the budget)."""

    impl: str
    batch: int
    steps: int | None
    train_s: float | None
    first_step_s: float | None
    error: str | None = None
    #: (steps, seconds) of each timed segment between two readings: where a fresh process is slower
    segments: tuple = ()


def task_to_target(task: ToTargetTask) -> dict[str, Any]:
    """Worker side: train to the target, timing the steps only (see the module docstring)."""
    from harness.run.curves import CurveWorker, probe_due, step_noise

    w = CurveWorker.load(task)
    spec, model, batches = w.spec, w.model, w.batches
    seed = spec.settings.seed
    train_s, first_step_s, step = 0.0, None, 0
    segments: list[tuple[int, float]] = []  # (steps, seconds) of each segment between two readings
    while step < task.steps:
        recon = w.held_out()[0]
        if math.isfinite(recon) and recon <= task.target_recon:
            return {"steps": step, "train_s": train_s, "first_step_s": first_step_s, "recon": recon,
                    "segments": segments}
        stop = next((i for i in range(step + 1, task.steps) if probe_due(i, task.every)), task.steps)
        ready = [(model.host_batch(batches[i]), *step_noise(spec, seed, i, task.batch)) for i in range(step, stop)]
        start = time.perf_counter()
        for n, (x, eps, fixed) in enumerate(ready):
            model.train_step(x, eps, **fixed)
            if step == 0 and n == 0:  # the first step alone, as the cell times its compile
                model.synchronize()
                first_step_s = time.perf_counter() - start
        model.synchronize()
        segments.append((stop - step, time.perf_counter() - start))
        train_s += segments[-1][1]
        step = stop
    recon = w.held_out()[0]
    reached = math.isfinite(recon) and recon <= task.target_recon
    return {"steps": step if reached else None, "train_s": train_s, "first_step_s": first_step_s, "recon": recon,
            "segments": segments}


def run_to_target(spec: VAESpec, impl: str, batch: int, inputs_path: Path, data: dict[str, Any], target_recon: float,
                  steps: int, every: int, timeout_s: float = 1800) -> DirectRun:
    """One fresh worker trains ``impl`` at ``batch`` to ``target_recon`` (within ``steps``); ``data``: the
    curve's training rows (``CurveData``: ``path``, ``columns``, ``train_rows``) and ``inputs_path`` its weights,
    held-out rows and scaling (``harness.run.curves.curve_inputs``)."""
    task = ToTargetTask(spec=spec.to_dict(), inputs_path=str(inputs_path), steps=steps, every=every,
                        data_path=data["path"], columns=data.get("columns"), train_rows=data["train_rows"],
                        batch=batch, target_recon=target_recon)
    outcome = run_worker(task, impl, spec.settings, timeout_s, extra_env=DIRECT_RUN_ENV)
    res = outcome.result or {}
    if res.get("status") != "ok":
        return DirectRun(impl, batch, None, None, None, error=worker_error_line(outcome))
    return DirectRun(impl, batch, res.get("steps"), res.get("train_s"), res.get("first_step_s"),
                     segments=tuple(tuple(x) for x in res.get("segments", [])))


__all__ = ["DIRECT_RUN_ENV", "DirectRun", "run_to_target", "task_to_target"]
