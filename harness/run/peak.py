"""The run's matmul peak, parent side: each installed framework's cached figure, or a ``PeakTask``
worker per framework that measures it, combined into the best (``harness.measure.peak``).

Each framework runs in a worker of its own, one after another (never side by side, which would
halve each one's CPU), started by ``run_worker`` like a cell, so it sees the cells' environment:
the inherited thread variables and the pinned ones (``NVIDIA_TF32_OVERRIDE`` and the rest).

**A gap is confirmed before it is cached.** Being timed one after another, one framework can meet a
neighbour's load that the others missed: on this project's shared 2-core VM, five rounds of all three
frameworks at 2048^3 gave torch 0.10-0.31 TFLOP/s, JAX 0.08-0.19 and TensorFlow 0.11-0.26, and in two
rounds a different framework came out far below the best. So when a framework first reads below
``FAR_BELOW`` x the best (``slow_frameworks``), it and the best are timed once more, each keeps its
faster round (``rounds_tflops`` lists them), and only then is the figure cached. A slower library is
slow in both rounds; a load spike rarely hits the same framework twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.measure.peak import (
    combine_peaks,
    default_cache_dir,
    installed_frameworks,
    peak_dtype,
    peak_key,
    read_cached,
    slow_frameworks,
    write_cached,
)
from harness.run.launch import run_worker
from harness.run.task import PeakTask
from harness.spec.schema import Settings

#: a GPU product of 8192 takes well under a second; a worker's import and the CPU probe take seconds
PEAK_TIMEOUT_S = 300.0
#: rounds after which a framework's figure counts as confirmed (the first, and one more where it looked far below)
CONFIRMED_ROUNDS = 2


def measured_peak(settings: Settings, device: str = "auto", *, cache_dir: str | Path | None = None,
                  frameworks: list[str] | None = None, size: int | None = None, repeats: int | None = None,
                  timeout_s: float = PEAK_TIMEOUT_S, refresh: bool = False) -> dict[str, Any]:
    """The matmul peak for this machine and these settings (their precision's dtype, ``peak_dtype``): the best
    rate among ``frameworks`` (default: every installed one), each measured once per machine and cached.

    ``device``: "gpu", "cpu" or "auto". ``cache_dir``: default ``default_cache_dir()``. Returns
    ``combine_peaks``'s dict: the best figure, ``set_by`` and every framework's own entry (each with
    ``cached`` true or false). A framework whose measurement fails has ``tflops`` None and its
    ``error`` (not cached); when none succeeds, the peak's ``tflops`` is None, so that rows carry no
    MFU rather than a wrong one. ``refresh`` measures again even when cached.
    """
    run = _Measurer(settings=settings, device=device, size=size, repeats=repeats, timeout_s=timeout_s,
                    where=Path(cache_dir) if cache_dir is not None else default_cache_dir())
    entries: dict[str, dict[str, Any]] = {}
    for name in installed_frameworks() if frameworks is None else list(frameworks):
        hit = None if refresh else read_cached(run.where, run.key(name))
        entries[name] = {**hit, "cached": True} if hit is not None else run.measure(name)
        if run.size is None and entries[name].get("size"):
            run.size = int(entries[name]["size"])  # every later framework times the first one's product
    timed_again: set[str] = set()
    while True:  # ends: each framework is timed again at most once per call
        peak = combine_peaks(entries, device)
        suspects = [s["framework"] for s in slow_frameworks(peak)]
        todo = [n for n in dict.fromkeys([*suspects, peak.get("set_by")] if suspects else [])
                if n not in timed_again and len(entries[n].get("rounds_tflops") or [None]) < CONFIRMED_ROUNDS]
        if not todo:
            return peak
        for name in todo:  # a faster second round of the best can make a new suspect: the loop looks again
            entries[name] = run.again(name, entries[name])
            timed_again.add(name)


@dataclass(kw_only=True)
class _Measurer:
    """What every framework's worker shares: the run's settings, device, cache and product."""

    settings: Settings
    device: str
    where: Path
    #: the requested size (None: the first framework's choice, then that)
    size: int | None
    repeats: int | None
    timeout_s: float

    def __post_init__(self) -> None:
        self.requested = self.size  # the cache key names the size asked for, not the one chosen

    def key(self, framework: str) -> dict[str, Any]:
        return peak_key(self.settings, self.device, self.requested, framework=framework)

    def measure(self, framework: str) -> dict[str, Any]:
        """One round in a fresh worker, cached when it succeeds."""
        result = self._worker(framework)
        if not result.get("tflops"):
            return result
        return {**write_cached(self.where, self.key(framework), {**result, "rounds_tflops": [result["tflops"]]}),
                "cached": False}

    def again(self, framework: str, first: dict[str, Any]) -> dict[str, Any]:
        """Another round; the faster of the two is kept and cached, with every round's rate."""
        second = self._worker(framework)
        if not second.get("tflops"):
            return first
        rounds = list(first.get("rounds_tflops") or [first["tflops"]]) + [second["tflops"]]
        best = second if second["tflops"] > first["tflops"] else first
        return {**write_cached(self.where, self.key(framework), {**best, "rounds_tflops": rounds}), "cached": False}

    def _worker(self, framework: str) -> dict[str, Any]:
        task = PeakTask(size=self.size, repeats=self.repeats, tf32=self.settings.tf32, device=self.device,
                        framework=framework, dtype=peak_dtype(self.settings))
        outcome = run_worker(task, "", self.settings, self.timeout_s)
        result = outcome.result or {}
        if result.get("status") == "ok":
            return result
        if outcome.timed_out:
            why = f"timed out after {self.timeout_s:.0f} s"
        elif result.get("message"):
            why = f"{result.get('error_type')}: {result['message']}"
        else:
            why = f"worker exited with {outcome.returncode}: {(outcome.stderr_tail or ['no output'])[-1]}"
        return {"tflops": None, "error": why, "cached": False}


__all__ = ["CONFIRMED_ROUNDS", "PEAK_TIMEOUT_S", "measured_peak"]
