"""How much the harness adds to the step time it reports.

The harness samples RSS after every step, counts windows and checks losses; a
bare loop does nothing but call the same train step. Both run in fresh
workers, interleaved in ABBA order (bare, harness, harness, bare, ...), and the figure is
the ratio of the medians of their per-step medians. The acceptance target is
a ratio within 5% of 1.

    python -m bench overhead --impl torch --spec dense --kmer 5 --batch 64 --steps 200 --repeats 3

The bare loop still calls the adapter. ``measure_baseline`` checks the adapter too: it
compares the cell with each framework's textbook loop (``bench/baselines``), code that
shares nothing with ``impls``, in the same ABBA pairs and with the same paired interval.

    python -m bench baseline --impl torch,flax,keras-jax --spec dense --kmer 5 --batch 64 --steps 200 --repeats 4
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np


class OverheadError(RuntimeError):
    """The bare loop or the harness's cell did not give a step time (a crash, a NaN loss): one line, exit 1."""


def measure_overhead(impl: str, spec, kmer: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Parent side: interleaved bare and harness workers; returns both medians and their ratio."""
    from harness.run.launch import run_worker
    from harness.run.parity import worker_error_line
    from harness.run.runner import Cell, run_one
    from harness.run.task import BareTask

    def run_bare() -> float:
        out = run_worker(BareTask(spec=spec.to_dict(), kmer=kmer, batch=batch, steps=steps),
                         impl, spec.settings, timeout_s=900)
        if (out.result or {}).get("status") != "ok":
            raise OverheadError(f"{impl}: the bare loop failed: {worker_error_line(out)}")
        return out.result["median_s"]

    def run_harness() -> float:
        row = run_one(Cell(impl, spec, kmer, batch, steps=steps, heap="auto"), {})
        if row["status"] != "ok":
            raise OverheadError(f"{impl}: the harness's cell failed: {row['failure_kind']}: {row['failure_message']}")
        return row["step_stats"]["median_s"]

    bare, harness = [], []
    for r in range(repeats):
        # ABBA order: whatever drifts across a pair (a neighbour's load, the page cache) falls on both
        if r % 2 == 0:
            bare.append(run_bare())
            harness.append(run_harness())
        else:
            harness.append(run_harness())
            bare.append(run_bare())
    b, h = statistics.median(bare), statistics.median(harness)
    low, high = paired_ratio_ci(bare, harness)
    return {"impl": impl, "spec": spec.name, "kmer": kmer, "batch": batch, "steps": steps, "repeats": repeats,
            "bare_median_s": b, "harness_median_s": h, "ratio": h / b, "ratio_ci95": [low, high],
            "bare_cv": statistics.stdev(bare) / statistics.mean(bare) if len(bare) > 1 else None,
            "bare_s": bare, "harness_s": harness}


def paired_ratio_ci(bare: list[float], harness: list[float]) -> tuple[float, float]:
    """95% CI of the harness/bare ratio from the ABBA pairs (t interval on log ratios).

    Step time varies more between processes than within one (thread placement,
    memory layout: a CV of 8-11% measured on 2 cores), so the pairs, not the windows, are the
    samples; with few repeats the interval says how much the ratio can be trusted.
    """
    from scipy import stats

    logs = np.log(np.asarray(harness) / np.asarray(bare))
    if logs.size < 2:
        return float("nan"), float("nan")
    sem = stats.sem(logs)
    if sem == 0:
        return float(np.exp(logs.mean())), float(np.exp(logs.mean()))
    low, high = stats.t.interval(0.95, logs.size - 1, loc=logs.mean(), scale=sem)
    return float(np.exp(low)), float(np.exp(high))


# ------------------------------------------------------------------------- textbook baselines


class BaselineError(RuntimeError):
    """A baseline that does not build the spec's model (its parameter count differs) or fails to run."""


def measure_baseline(impl: str, spec, kmer: int, batch: int, steps: int, repeats: int,
                     timeout_s: float = 900.0) -> dict[str, Any]:
    """The harness's cell against the textbook loop of its framework (``bench.baselines``), each in a
    fresh worker with the cell's environment, in ABBA order; both step figures of the cell
    (``step``: host batches; ``device_step``: batches staged before the clock) over the baseline's.

    Raises ``BaselineError`` when the baseline's trainable parameter count is not the spec's:
    then it timed another model, and no ratio means anything.
    """
    from bench.baselines import BASELINES
    from harness.run.launch import run_worker
    from harness.run.runner import Cell, run_one
    from harness.run.schedule import steps_per_window, warmup_steps
    from harness.run.task import BaselineTask
    from harness.spec.params import count_params

    if impl not in BASELINES:
        raise BaselineError(f"no textbook baseline for impl {impl!r}; baselines exist for {', '.join(BASELINES)}")
    module = BASELINES[impl]
    expected = count_params(spec).trainable
    task = BaselineTask(module=module, spec=spec.to_dict(), kmer=kmer, batch=batch, steps=steps,
                        warmup=1 + warmup_steps(steps), steps_per_window=steps_per_window(steps))
    seen: dict[str, Any] = {}

    def run_base() -> float:
        out = run_worker(task, impl, spec.settings, timeout_s=timeout_s)
        res = out.result or {}
        if res.get("status") != "ok":
            raise BaselineError(f"{module} failed for {impl}: {res.get('message') or out.stderr_tail[-3:]}")
        if res["params"] != expected:
            raise BaselineError(f"{module} built {res['params']:,} trainable parameters, the spec "
                                f"{spec.name} has {expected:,}: it is not the same model, so no ratio is reported")
        seen.update(framework=res.get("framework"), loop=res.get("loop"), params=res["params"])
        return res["median_s"]

    def run_cell() -> tuple[float, float]:
        row = run_one(Cell(impl, spec, kmer, batch, steps=steps, heap="auto"), {})
        if row["status"] != "ok":
            raise BaselineError(f"harness cell {impl} failed: {row['failure_kind']}: {row['failure_message']}")
        seen.update(harness_params=row["param_counts"]["trainable"], train_loop=row.get("train_loop"),
                    syncs_every_step=row.get("syncs_every_step"), device_step_source=row.get("device_step_source"))
        return row["step_stats"]["median_s"], row["device_step_stats"]["median_s"]

    base, step, device = [], [], []
    for r in range(repeats):
        order = (run_base, run_cell) if r % 2 == 0 else (run_cell, run_base)  # ABBA
        for fn in order:
            if fn is run_base:
                base.append(run_base())
            else:
                s, d = run_cell()
                step.append(s)
                device.append(d)
    b = statistics.median(base)
    out: dict[str, Any] = {
        "impl": impl, "baseline": module.rsplit(".", 1)[1], "baseline_loop": seen.get("loop"),
        "framework": seen.get("framework"), "spec": spec.name, "kmer": kmer, "batch": batch, "steps": steps,
        "repeats": repeats, "baseline_median_s": b,
        "params": {"spec": expected, "baseline": seen.get("params"), "harness": seen.get("harness_params"),
                   "equal": seen.get("params") == expected == seen.get("harness_params")},
        "harness_train_loop": seen.get("train_loop"), "harness_syncs_every_step": seen.get("syncs_every_step"),
        "device_step_source": seen.get("device_step_source"),
        "baseline_s": base, "step_s": step, "device_step_s": device,
    }
    for name, values in (("step", step), ("device_step", device)):
        h = statistics.median(values)
        out[f"{name}_median_s"] = h
        out[f"{name}_ratio"] = h / b
        out[f"{name}_ratio_ci95"] = list(paired_ratio_ci(base, values))
    return out
