"""The device's float32 matmul rate, the denominator of MFU: what is cached, and how rows use it.

Framework-free. The measurement itself runs in a worker (``PeakTask``, dispatched by
``harness.run.worker`` to ``impls.peak``, which imports torch or JAX); the parent's
``harness.run.peak.measured_peak`` reads the cache below or starts that worker.

**Method.** One square float32 product ``C = A @ B`` of size ``n`` (GPU: 8192; CPU: 2048, smaller
on a slow CPU so that one product takes about a second), timed with a synchronised wall clock
after warm-up products, repeated; the rate is ``2 n^3`` FLOPs over the median time. TF32 is off
(``NVIDIA_TF32_OVERRIDE=0`` and the framework's own switch), as in every cell; a run with
``--tf32`` measures it on as well and uses that figure, keeping the off figure beside it. The
worker inherits the cells' environment (thread counts, pinned variables), so on a CPU the rate is
the one the cells' thread settings allow. PyTorch measures it where installed (its CPU matmul is
oneDNN/MKL), else JAX.

**Cache.** ``<results dir>/matmul_peak.json``, one entry per :func:`peak_key`: device model, the
CPUs the process may use, the inherited thread and allocator variables, TF32, the requested size
and the method's version. A later run on the same machine with the same settings reuses it and
says ``cached: true``.

**MFU** = achieved matmul FLOP rate (dense and conv FLOPs of a step, ``harness.spec.flops``, over
the median step time) / this peak. It can pass 1 only when the cells' kernels beat a plain
square product.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from harness.measure.fingerprint import PERFORMANCE_ENV, cpu_model
from harness.measure.probes import gpu_inventory
from harness.spec.flops import CONVENTION, FlopCount
from harness.spec.schema import Settings

#: bump when the method changes, so that older cached figures are not reused
PEAK_METHOD_VERSION = 1
CACHE_FILE = "matmul_peak.json"
#: the module the worker imports (by name: the harness never imports a framework or ``impls``)
PEAK_MODULE = "impls.peak"
GPU_SIZE = 8192
CPU_SIZE = 2048
GPU_REPEATS = 10
CPU_REPEATS = 5
#: on a CPU the size is halved until one product is expected to take at most this long
CPU_TARGET_S = 1.0

__all__ = ["CACHE_FILE", "PEAK_MODULE", "cpu_model", "flop_fields", "mfu_fields", "peak_key", "peak_text", "read_cached",
           "write_cached"]


def peak_key(settings: Settings, device: str, size: int | None = None) -> dict[str, Any]:
    """What a cached peak must match to be reused (``device``: "gpu", "cpu" or "auto")."""
    gpus = gpu_inventory() if device != "cpu" else []
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count()
    return {
        "method": PEAK_METHOD_VERSION,
        "device": device,
        "gpus": sorted(str(g.get("name")) for g in gpus),
        "cpu_model": cpu_model(),
        "cpus": cpus,
        "env": {k: os.environ[k] for k in PERFORMANCE_ENV if k in os.environ},
        "tf32": bool(settings.tf32),
        "size": size,
    }


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_cached(results_dir: str | Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry for ``key``, or None (also for a missing or unreadable cache)."""
    entry = _read(Path(results_dir) / CACHE_FILE).get(key_id(key))
    if isinstance(entry, dict) and entry.get("key") == key and _finite(entry.get("tflops")):
        return entry
    return None


def write_cached(results_dir: str | Path, key: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Store a measured peak under ``key`` (atomically, keeping other keys' entries); returns the entry."""
    path = Path(results_dir) / CACHE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {**{k: v for k, v in result.items() if k not in ("status", "cached")}, "key": key,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    entries = _read(path)
    entries[key_id(key)] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(entries, indent=2, sort_keys=True))
    tmp.replace(path)
    return entry


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------ rows


def flop_fields(count: FlopCount, step_s: float | None, device_step_s: float | None) -> dict[str, Any]:
    """A cell row's ``flops`` and ``tflops``: the step's FLOPs and the achieved rates (TFLOP/s).

    ``tflops.step`` counts every FLOP of the step; ``tflops.matmul_step`` only the dense and conv
    part, the numerator of MFU. ``device_step`` likewise over the device-step median."""
    def rate(flops: int, s: float | None) -> float | None:
        return flops / s / 1e12 if s and math.isfinite(s) and s > 0 else None

    return {
        "flops": {"per_step": count.total, "matmul_per_step": count.matmul, "forward": count.forward,
                  "backward": count.backward, "update": count.update, "overcount": count.overcount,
                  "convention": CONVENTION},
        "tflops": {"step": rate(count.total, step_s), "device_step": rate(count.total, device_step_s),
                   "matmul_step": rate(count.matmul, step_s),
                   "matmul_device_step": rate(count.matmul, device_step_s)},
    }


def mfu_fields(row_tflops: dict[str, Any] | None, peak: dict[str, Any] | None,
               row_device: str | None = None) -> dict[str, Any]:
    """``{"mfu": {"step", "device_step"}, "matmul_peak_tflops"}`` for one row; None where unknown.

    MFU is the row's matmul rate (``tflops.matmul_step``, dense and conv FLOPs only) over the
    peak's ``tflops``. ``row_device`` ("gpu"/"cpu", the row's ``device_kind``): when given and the
    peak was measured on the other kind of device, MFU is None rather than a ratio of unlike things.
    """
    p = peak.get("tflops") if isinstance(peak, dict) else None
    p = float(p) if _finite(p) else None
    mfu: dict[str, float | None] = {"step": None, "device_step": None}
    measured_on = peak.get("device_kind") if isinstance(peak, dict) else None
    comparable = row_device is None or measured_on is None or row_device == measured_on
    if p and comparable and isinstance(row_tflops, dict):
        for k in mfu:
            v = row_tflops.get(f"matmul_{k}")
            mfu[k] = float(v) / p if _finite(v) else None
    return {"mfu": mfu, "matmul_peak_tflops": p}


def peak_text(peak: dict[str, Any] | None) -> str:
    """One line for the report: the rate, the product's size, dtype and TF32, and how it was taken."""
    if not isinstance(peak, dict):
        return "not measured"
    if not _finite(peak.get("tflops")):
        return f"not measured: {peak.get('error') or 'no figure'}"
    n = peak.get("size")
    threads = f", {peak['threads']} thread(s)" if peak.get("threads") else ""
    method = peak.get("method") or (f"{peak.get('framework') or '?'} {n}x{n} {peak.get('dtype', 'float32')} "
                                     f"A@B, TF32 {'on' if peak.get('tf32') else 'off'}")
    text = f"{peak['tflops']:.3g} TFLOP/s on {peak.get('device') or '?'}{threads} ({peak.get('framework') or '?'}): {method}"
    off = peak.get("tf32_off")
    if isinstance(off, dict) and _finite(off.get("tflops")):
        text += f"; {off['tflops']:.3g} TFLOP/s with TF32 off"
    if peak.get("note"):
        text += f"; {peak['note']}"
    return text + (" (cached)" if peak.get("cached") else "")
