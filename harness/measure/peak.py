"""The device's float32 matmul peak, the denominator of MFU: the best rate among the installed frameworks.

Framework-free. Each framework's matmul is measured in a worker of its own (``PeakTask``, dispatched
by ``harness.run.worker`` to ``impls.peak``, which imports that one framework); the parent's
``harness.run.peak.measured_peak`` reads the cache below or starts those workers, and
:func:`combine_peaks` turns their figures into the run's peak.

**Why the best of several.** A peak must be a ceiling. One framework's rate is not one: on an AMD
EPYC 2-core CPU torch's 2048^3 float32 product (MKL) ran at 0.203 TFLOP/s and a jitted JAX product
at 0.427, so with torch's figure as the peak the flax rows read MFU 163%. The peak is therefore the
highest rate among the frameworks installed (:data:`FRAMEWORKS`), on the device the cells use, at
the cells' precision (a float32 product for fp32 and tf32 cells, a bfloat16 one for bf16 cells: ``peak_dtype``;
the cache key names the dtype, so each precision gets figures of its own, and a bf16 row's MFU is taken against the
bf16 peak). The peak names the framework that set it (``framework``, ``set_by``) and keeps every
framework's own figure (``frameworks``). A framework far below the best on the same device
(:func:`slow_frameworks`) is a finding the report states under Environment.

**Method**, per framework. One square float32 product ``C = A @ B`` of size ``n`` (GPU: 8192; CPU:
2048, smaller on a slow CPU so that one product takes about a second; every framework after the
first uses the first one's size), timed with a synchronised wall clock after warm-up products,
repeated; the rate is ``2 n^3`` FLOPs over the median time. TF32 is off (``NVIDIA_TF32_OVERRIDE=0``
and the framework's own switch), as in every cell; a run with ``--tf32`` measures it on as well and
uses that figure, keeping the off figure beside it. The worker inherits the cells' environment
(thread counts, pinned variables), so on a CPU the rate is the one the cells' thread settings allow.

**Cache: per machine, not per results dir.** ``$VAEBENCH_CACHE_DIR``, else
``$XDG_CACHE_HOME/vaebench``, else ``~/.cache/vaebench``; file ``matmul_peak.json``, one entry per
framework and :func:`peak_key`: device model, the CPUs the process may use, the inherited thread and
allocator variables, TF32, dtype, the requested size, the method's version, the framework and its
installed versions. The figure belongs to the machine and the framework builds, not to one run:
measuring three frameworks costs about 20 s on a 2-core CPU (TensorFlow's import alone about 7 s),
which a per-results-dir cache paid again for every new results dir and every test's temporary one.
A new framework version, thread setting or CPU count is a new key, so a stale figure is never reused
for a changed setup; ``measured_peak(refresh=True)`` measures again (a machine that was busy during
the measurement, say). Each figure is also copied into every row's fingerprint, so a results dir
still says what its MFU was taken against.

**MFU** = achieved matmul FLOP rate (dense and conv FLOPs of a step, ``harness.spec.flops``, over
the median step time) / this peak. Every framework a built-in row computes with is measured, so a row's MFU
passes 1 only if its kernels beat the fastest plain square product measured on that device.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from harness.files import CACHE_ENV, default_cache_dir  # noqa: F401 - re-exported
from harness.measure.fingerprint import PERFORMANCE_ENV, cpu_model
from harness.measure.probes import gpu_inventory
from harness.spec.flops import CONVENTION, FlopCount
from harness.spec.schema import Settings

#: bump when the method changes, so that older cached figures are not reused
#: (2: one entry per framework, keyed by its versions; the cache moved from the results dir to the machine)
PEAK_METHOD_VERSION = 2
CACHE_FILE = "matmul_peak.json"
#: where the per-machine cache lives when set (tests and CI point it at a folder of their own)
#: the module the worker imports (by name: the harness never imports a framework or ``impls``)
PEAK_MODULE = "impls.peak"
#: the frameworks whose matmul is measured, in order (the first one found picks the CPU size),
#: each with the distributions whose versions key its cached figure (those installed are recorded)
FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "jax": ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin"),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tf-nightly"),
}
#: the precision measured; a key of the cache and of the peak, so another precision gets figures of its own
DTYPE = "float32"
#: the product's dtype for a bf16 cell: its matmuls take bfloat16 operands (accumulating in float32)
BF16_DTYPE = "bfloat16"


def peak_dtype(settings: Settings) -> str:
    """The dtype of the square product that is a cell's peak: bfloat16 for a bf16 cell, else float32 (tf32 is
    float32 with TF32 on, a switch of its own in the key)."""
    return BF16_DTYPE if settings.precision == "bf16" else DTYPE
#: a framework whose own rate is below this fraction of the best on the same device is a finding
FAR_BELOW = 0.75
GPU_SIZE = 8192
CPU_SIZE = 2048
GPU_REPEATS = 10
CPU_REPEATS = 5
#: on a CPU the size is halved until one product is expected to take at most this long
CPU_TARGET_S = 1.0

__all__ = ["BF16_DTYPE", "CACHE_FILE", "DTYPE", "FAR_BELOW", "FRAMEWORKS", "PEAK_MODULE", "combine_peaks", "cpu_model",
           "default_cache_dir", "flop_fields", "framework_versions", "installed_frameworks", "mfu_fields",
           "peak_dtype", "peak_key", "peak_text", "read_cached", "read_json_object", "slow_frameworks", "write_cached"]


# ------------------------------------------------------------------------------ what to measure


def installed_frameworks() -> list[str]:
    """The frameworks of :data:`FRAMEWORKS` that can be imported here (found, not imported)."""
    return [name for name in FRAMEWORKS if importlib.util.find_spec(name) is not None]


def framework_versions(framework: str) -> dict[str, str]:
    """The installed versions of ``framework``'s distributions (package metadata; nothing is imported)."""
    out = {}
    for dist in FRAMEWORKS.get(framework, (framework,)):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------ cache


def peak_key(settings: Settings, device: str, size: int | None = None, framework: str | None = None,
             ) -> dict[str, Any]:
    """What a cached figure must match to be reused (``device``: "gpu", "cpu" or "auto").

    With ``framework``, the key of that framework's figure: its installed versions join the key."""
    gpus = gpu_inventory() if device != "cpu" else []
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count()
    key = {
        "method": PEAK_METHOD_VERSION,
        "device": device,
        "gpus": sorted(str(g.get("name")) for g in gpus),
        "cpu_model": cpu_model(),
        "cpus": cpus,
        "env": {k: os.environ[k] for k in PERFORMANCE_ENV if k in os.environ},
        "tf32": bool(settings.tf32),
        "dtype": peak_dtype(settings),
        "size": size,
    }
    if framework is not None:
        key.update(framework=framework, versions=framework_versions(framework))
    return key


def key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def read_cached(cache_dir: str | Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached entry for ``key``, or None (also for a missing or unreadable cache)."""
    entry = read_json_object(Path(cache_dir) / CACHE_FILE).get(key_id(key))
    if isinstance(entry, dict) and entry.get("key") == key and _finite(entry.get("tflops")):
        return entry
    return None


def write_cached(cache_dir: str | Path, key: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Store a measured figure under ``key`` (atomically, keeping other keys' entries); returns the entry.

    A cache that cannot be written (a read-only home) costs only the reuse: the entry is returned."""
    path = Path(cache_dir) / CACHE_FILE
    entry = {**{k: v for k, v in result.items() if k not in ("status", "cached")}, "key": key,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_json_object(path)
        entries[key_id(key)] = entry
        tmp.write_text(json.dumps(entries, indent=2, sort_keys=True))
        tmp.replace(path)
    except OSError:
        pass
    return entry


def read_json_object(path: Path) -> dict[str, Any]:
    """A cache file's JSON object; ``{}`` where it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


# ------------------------------------------------------------------------------ the peak


def combine_peaks(entries: dict[str, dict[str, Any]], device: str) -> dict[str, Any]:
    """The run's peak from each framework's figure (``{name: entry}``, an entry with ``tflops`` None
    and an ``error`` where that framework's measurement failed).

    The peak is the best entry's figure, on the device the cells use: ``device`` where a framework
    measured there, else a GPU where one did, else the CPU (a framework that sees no GPU falls back to
    the CPU; that figure is kept, marked ``counted: false``, and never taken as a GPU peak). The result
    is the best entry's fields (``tflops``, ``framework``, ``device``, ``size``, ...) plus ``set_by``
    (the framework's name), ``frameworks`` (every entry, without its cache key) and ``cached`` (true
    when every counted figure came from the cache). No counted figure: ``tflops`` None and the reasons.
    """
    measured = {n: e for n, e in entries.items() if _finite(e.get("tflops"))}
    kinds = {e.get("device_kind") for e in measured.values()}
    kind = device if device in kinds else "gpu" if "gpu" in kinds else "cpu"
    frameworks: dict[str, dict[str, Any]] = {}
    for name, e in entries.items():
        f = {k: v for k, v in e.items() if k not in ("key", "status")}
        f["counted"] = name in measured and e.get("device_kind") == kind
        if name in measured and not f["counted"]:
            f["why_not_counted"] = f"measured on the {e.get('device_kind')}; the peak is the {kind}'s"
        frameworks[name] = f
    counted = [n for n in measured if frameworks[n]["counted"]]
    if not counted:
        why = "; ".join(f"{n}: {f.get('error') or f.get('why_not_counted') or 'no figure'}"
                        for n, f in frameworks.items())
        return {"tflops": None, "error": why or "no framework to measure it with is installed",
                "frameworks": frameworks, "cached": False}
    best = max(counted, key=lambda n: measured[n]["tflops"])
    return {**{k: v for k, v in entries[best].items() if k != "status"}, "set_by": best, "frameworks": frameworks,
            "cached": all(bool(entries[n].get("cached")) for n in counted)}


def slow_frameworks(peak: dict[str, Any] | None, ratio: float = FAR_BELOW) -> list[dict[str, Any]]:
    """The counted frameworks whose own rate is below ``ratio`` x the peak on the same device, slowest first:
    ``{"framework", "label", "tflops", "ratio", "best", "best_label", "best_tflops", "device", "size", "rounds"}``
    (``ratio``: the framework's median rate over the peak's; ``rounds``: each timing round's rate).
    Empty for a peak with one framework (every stored row before per-framework peaks).

    The frameworks are timed one after another, so a neighbour's load can slow one of them alone; on
    this 2-core machine, with other jobs running, JAX's median once read 0.66x TensorFlow's. So a
    framework's *fastest* product must still be below ``ratio`` x the peak's median rate, and
    ``harness.run.peak`` times a suspect and the best a second round before caching them."""
    if not isinstance(peak, dict) or not _finite(peak.get("tflops")) or not isinstance(peak.get("frameworks"), dict):
        return []
    top = float(peak["tflops"])
    out = []
    for name, f in peak["frameworks"].items():
        if not (isinstance(f, dict) and f.get("counted") and _finite(f.get("tflops"))):
            continue
        if _fastest_rate(f) < ratio * top:
            out.append({"framework": name, "label": f.get("framework") or name, "tflops": float(f["tflops"]),
                        "ratio": float(f["tflops"]) / top, "best": peak.get("set_by"),
                        "best_label": peak.get("framework"), "best_tflops": top, "device": peak.get("device"),
                        "size": f.get("size"), "rounds": list(f.get("rounds_tflops") or [f["tflops"]])})
    return sorted(out, key=lambda s: s["ratio"])


def _fastest_rate(entry: dict[str, Any]) -> float:
    """The rate of an entry's fastest timed product (its median rate where the timings are missing)."""
    times = [t for t in entry.get("seconds") or [] if _finite(t)]
    n = entry.get("size")
    if times and isinstance(n, int) and n > 0:
        return max(float(entry["tflops"]), 2 * n**3 / min(times) / 1e12)
    return float(entry["tflops"])


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
    peak's ``tflops``, the fastest framework's (:func:`combine_peaks`; the framework that set it is
    the peak's ``framework`` and ``set_by``, in every row's ``fingerprint.matmul_peak``).
    ``row_device`` ("gpu"/"cpu", the row's ``device_kind``): when given and the peak was measured
    on the other kind of device, MFU is None rather than a ratio of unlike things.
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
    if isinstance(peak.get("frameworks"), dict):
        text += f"; {_frameworks_text(peak)}"
    return text + (" (cached)" if peak.get("cached") else "")


def _frameworks_text(peak: dict[str, Any]) -> str:
    """Which framework set the peak, and every framework's own figure (or why it has none)."""
    parts = []
    for name, f in peak["frameworks"].items():
        if not isinstance(f, dict):
            continue
        if not _finite(f.get("tflops")):
            parts.append(f"{name} not measured ({f.get('error') or 'no figure'})")
        elif not f.get("counted"):
            parts.append(f"{name} {f['tflops']:.3g} ({f.get('why_not_counted') or 'not counted'})")
        else:
            parts.append(f"{name} {f['tflops']:.3g}")
    counted = sum(1 for f in peak["frameworks"].values() if isinstance(f, dict) and f.get("counted"))
    who = peak.get("set_by") or peak.get("framework") or "?"
    if counted <= 1:
        return f"set by {who}, the only framework measured here: " + ", ".join(parts) + " TFLOP/s"
    return f"set by {who}, the fastest of: " + ", ".join(parts) + " TFLOP/s"
