"""How much the harness adds to the step time it reports.

The harness samples RSS after every step, counts windows and checks losses; a
bare loop does nothing but call the same train step. Both run in fresh
workers, interleaved in ABBA order (bare, harness, harness, bare, ...), and the figure is
the ratio of the medians of their per-step medians. The acceptance target is
a ratio within 5% of 1.

    python -m bench overhead --impl torch --spec dense --kmer 5 --batch 64 --steps 200 --repeats 3
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np


def bare_loop(task: dict[str, Any]) -> dict[str, Any]:
    """Worker side: the same windows as the harness, without any probe."""
    from harness.adapter import load_adapter_class
    from harness.data import make_source
    from harness.reference import init_weights
    from harness.spec import VAESpec

    spec = VAESpec.from_dict(task["spec"])
    model = load_adapter_class(task["impl"])(spec)
    model.set_weights(init_weights(spec))
    source = make_source(task["kmer"], task["batch"], seed=spec.settings.seed)
    steps, spw = task["steps"], max(1, task["steps"] // 20)
    for _ in range(1 + max(4, min(20, steps // 10))):  # the harness's compile and warm-up steps
        model.loss_value(model.train_step(source.next()))
    model.synchronize()
    per_step = []
    done = 0
    while done < steps:
        xs = [source.next() for _ in range(spw)]
        t = time.perf_counter()
        for x in xs:
            handle = model.train_step(x)
        model.synchronize()
        per_step.append((time.perf_counter() - t) / spw)
        done += spw
        model.loss_value(handle)
    return {"median_s": float(np.median(per_step)), "window_times_s": per_step}


def measure_overhead(impl: str, spec, kmer: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Parent side: interleaved bare and harness workers; returns both medians and their ratio."""
    from harness.launch import run_worker
    from harness.runner import Cell, run_one

    def run_bare() -> float:
        out = run_worker({"kind": "bare", "spec": spec.to_dict(), "kmer": kmer, "batch": batch, "steps": steps},
                         impl, spec.settings, timeout_s=900)
        if (out.result or {}).get("status") != "ok":
            raise RuntimeError(f"bare loop failed: {(out.result or {}).get('message') or out.stderr_tail[-1:]}")
        return out.result["median_s"]

    def run_harness() -> float:
        row = run_one(Cell(impl, spec, kmer, batch, steps=steps, heap="auto"), {})
        if row["status"] != "ok":
            raise RuntimeError(f"harness cell failed: {row['failure_kind']}: {row['failure_message']}")
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
