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
from typing import Any

import numpy as np


def measure_overhead(impl: str, spec, kmer: int, batch: int, steps: int, repeats: int) -> dict[str, Any]:
    """Parent side: interleaved bare and harness workers; returns both medians and their ratio."""
    from harness.run.launch import run_worker
    from harness.run.runner import Cell, run_one
    from harness.run.task import BareTask

    def run_bare() -> float:
        out = run_worker(BareTask(spec=spec.to_dict(), kmer=kmer, batch=batch, steps=steps),
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
