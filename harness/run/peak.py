"""The run's matmul peak, parent side: each installed framework's cached figure, or a ``PeakTask``
worker per framework that measures it, combined into the best (``harness.measure.peak``).

Each framework runs in a worker of its own, one after another (never side by side, which would
halve each one's CPU), started by ``run_worker`` like a cell, so it sees the cells' environment:
the inherited thread variables and the pinned ones (``NVIDIA_TF32_OVERRIDE`` and the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.peak import combine_peaks, default_cache_dir, installed_frameworks, peak_key, read_cached, write_cached
from harness.run.launch import run_worker
from harness.run.task import PeakTask
from harness.spec.schema import Settings

#: a GPU product of 8192 takes well under a second; a worker's import and the CPU probe take seconds
PEAK_TIMEOUT_S = 300.0


def measured_peak(settings: Settings, device: str = "auto", *, cache_dir: str | Path | None = None,
                  frameworks: list[str] | None = None, size: int | None = None, repeats: int | None = None,
                  timeout_s: float = PEAK_TIMEOUT_S, refresh: bool = False) -> dict[str, Any]:
    """The float32 matmul peak for this machine and these settings: the best rate among ``frameworks``
    (default: every installed one), each measured once per machine and cached.

    ``device``: "gpu", "cpu" or "auto". ``cache_dir``: default ``default_cache_dir()``. Returns
    ``combine_peaks``'s dict: the best figure, ``set_by`` and every framework's own entry (each with
    ``cached`` true or false). A framework whose measurement fails has ``tflops`` None and its
    ``error`` (not cached); when none succeeds, the peak's ``tflops`` is None, so that rows carry no
    MFU rather than a wrong one. ``refresh`` measures again even when cached.
    """
    where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    names = installed_frameworks() if frameworks is None else list(frameworks)
    entries: dict[str, dict[str, Any]] = {}
    chosen = size  # the first framework's size is every later one's, so that all time the same product
    for name in names:
        key = peak_key(settings, device, size, framework=name)
        hit = None if refresh else read_cached(where, key)
        if hit is None:
            entries[name] = _measure(name, key, where, settings, device, chosen, repeats, timeout_s)
        else:
            entries[name] = {**hit, "cached": True}
        if chosen is None and entries[name].get("size"):
            chosen = int(entries[name]["size"])
    return combine_peaks(entries, device)


def _measure(framework: str, key: dict[str, Any], where: Path, settings: Settings, device: str,
             size: int | None, repeats: int | None, timeout_s: float) -> dict[str, Any]:
    task = PeakTask(size=size, repeats=repeats, tf32=settings.tf32, device=device, framework=framework)
    outcome = run_worker(task, "", settings, timeout_s)
    result = outcome.result or {}
    if result.get("status") != "ok":
        if outcome.timed_out:
            why = f"timed out after {timeout_s:.0f} s"
        elif result.get("message"):
            why = f"{result.get('error_type')}: {result['message']}"
        else:
            why = f"worker exited with {outcome.returncode}: {(outcome.stderr_tail or ['no output'])[-1]}"
        return {"tflops": None, "error": why, "key": key, "cached": False}
    return {**write_cached(where, key, result), "cached": False}


__all__ = ["PEAK_TIMEOUT_S", "measured_peak"]
