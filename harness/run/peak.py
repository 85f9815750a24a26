"""The run's matmul peak, parent side: the cached figure, or a ``PeakTask`` worker that measures it.

Method, cache and MFU: ``harness.measure.peak``. The worker is started by ``run_worker`` like a
cell, so it sees the same environment: the inherited thread variables and the pinned ones
(``NVIDIA_TF32_OVERRIDE`` and the rest).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.measure.peak import peak_key, read_cached, write_cached
from harness.run.launch import run_worker
from harness.run.task import PeakTask
from harness.spec.schema import Settings

#: a GPU product of 8192 takes well under a second; a worker's import and the CPU probe take seconds
PEAK_TIMEOUT_S = 300.0


def measured_peak(results_dir: str | Path, settings: Settings, device: str = "auto", *, size: int | None = None,
                  repeats: int | None = None, timeout_s: float = PEAK_TIMEOUT_S, refresh: bool = False,
                  ) -> dict[str, Any]:
    """The float32 matmul rate for this machine and these settings, measured once per results dir.

    ``device``: "gpu", "cpu" or "auto". Returns the stored entry with ``cached`` true or false;
    when the measurement fails, ``{"tflops": None, "error": ..., "cached": False}`` (not cached), so
    that rows carry no MFU rather than a wrong one. ``refresh`` measures again even when cached.
    """
    key = peak_key(settings, device, size)
    if not refresh:
        hit = read_cached(results_dir, key)
        if hit is not None:
            return {**hit, "cached": True}
    task = PeakTask(size=size, repeats=repeats, tf32=settings.tf32, device=device)
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
    return {**write_cached(results_dir, key, result), "cached": False}


__all__ = ["measured_peak"]
