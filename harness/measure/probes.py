"""Memory probes that need no framework: /proc, tracemalloc, psutil and NVML.

Host memory is read as anonymous and file-backed RSS apart (``RssAnon`` and
``RssFile`` of /proc/self/status). The split matters: a memmap loader fills
RssFile as it reads pages, which is page cache the kernel can drop, not a leak.
A detector watching plain RSS would call it one.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.measure.tracker import Tracking

_FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM")


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """RSS fields of /proc/PID/status in bytes (kB granularity, as the kernel keeps them).

    On a system without /proc (macOS) only ``VmRSS`` from psutil is returned and
    ``RssAnon`` falls back to it, labelled by ``anon_is_total``.
    """
    path = Path(f"/proc/{pid}/status")
    if not path.exists():
        import psutil

        rss = psutil.Process(os.getpid() if pid == "self" else int(pid)).memory_info().rss
        return {"VmRSS": rss, "RssAnon": rss, "RssFile": 0, "RssShmem": 0, "VmHWM": rss, "anon_is_total": 1}
    out: dict[str, int] = {}
    with open(path) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in _FIELDS:
                out[key] = int(rest.split()[0]) * 1024
    return out


@dataclass
class RssSeries:
    """RssAnon and RssFile in bytes, one of each per ``RssSampler.sample()``."""

    anon: list[int]
    file: list[int]


class RssSampler(Tracking[RssSeries]):
    """Cheap per-step sampler of RssAnon and RssFile: one read of /proc/self/status (a tracker:
    ``start()`` opens the file, ``sample()`` after each step, ``stop()`` closes it, ``result()``).

    Keeps the file open and re-reads it, which costs tens of microseconds.
    """

    def __init__(self) -> None:
        self.anon: list[int] = []
        self.file: list[int] = []
        self._fh = None

    def start(self) -> None:
        if self._fh is None and Path("/proc/self/status").exists():
            self._fh = open("/proc/self/status", "rb", buffering=0)  # noqa: SIM115 - held open until stop()

    def sample(self) -> None:
        if self._fh is None:
            s = proc_status()
            self.anon.append(s["RssAnon"])
            self.file.append(s["RssFile"])
            return
        self._fh.seek(0)
        data = self._fh.read(8192)
        anon = file_ = 0
        for line in data.split(b"\n"):
            if line.startswith(b"RssAnon:"):
                anon = int(line.split()[1]) * 1024
            elif line.startswith(b"RssFile:"):
                file_ = int(line.split()[1]) * 1024
                break
        self.anon.append(anon)
        self.file.append(file_)

    def stop(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None

    close = stop

    def result(self) -> RssSeries:
        return RssSeries(self.anon, self.file)


def reset_peak_rss() -> bool:
    """Restart the kernel's VmHWM from the current RSS (Linux: ``5`` to clear_refs).

    Lets a cell measure the peak of training alone, after the model is built and
    the shared initial weights (a numpy copy) are freed. False where unsupported.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_heap() -> bool:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim(0)``).

    After XLA's CPU compile, or any step, glibc keeps the freed buffers mapped:
    measured on conv-final k=7 b=64 under Flax, RssAnon stood at 1.6 GB after
    the first step and 0.37 GB after a trim. A peak measured from there would
    count the compiler's scratch as training memory. Frees nothing still in use;
    False where the C library has no ``malloc_trim`` (musl, macOS).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, looked up once (``find_library`` runs ``ldconfig``, and the leak phase trims
    after every step); None where the C library has none."""
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def peak_rss_bytes() -> int:
    """Peak resident set of this process (VmHWM): the CPU stand-in for device memory."""
    return proc_status().get("VmHWM", 0)


def nvml_process_memory(pid: int | None = None) -> dict[str, int] | None:
    """GPU memory used by this process according to the driver (NVML), per device.

    Returns None where NVML or a GPU is absent: on CPU this probe is skipped,
    not faked. The driver's figure includes the CUDA context and allocator
    caches that framework counters leave out.
    """
    try:
        import pynvml
    except ImportError:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU
        return None
    try:
        used: dict[str, int] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == pid and proc.usedGpuMemory is not None:
                    used[f"gpu{i}"] = int(proc.usedGpuMemory)
        return used
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


class NvmlMemory(Tracking["dict[str, int] | None"]):
    """This process's GPU memory according to the driver, read when the stretch stops
    (``nvml_process_memory``: None where NVML or a GPU is absent)."""

    def __init__(self) -> None:
        self._used: dict[str, int] | None = None

    def start(self) -> None:
        self._used = None

    def stop(self) -> None:
        self._used = nvml_process_memory()

    def result(self) -> dict[str, int] | None:
        return self._used


def gpu_inventory() -> list[dict[str, str | int]]:
    """Name, total memory and driver of every NVIDIA GPU, for the fingerprint."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                        "memory_bytes": int(pynvml.nvmlDeviceGetMemoryInfo(h).total),
                        "driver": driver.decode() if isinstance(driver, bytes) else driver})
        return out
    except Exception:  # noqa: BLE001
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def frameworks_loaded() -> list[str]:
    """Which frameworks this process has imported (a worker must have only its own impl's): the modules
    the built-in impls' records name (``harness.impls_registry``)."""
    from harness.impls_registry import framework_modules

    return sorted(m for m in framework_modules() if m in sys.modules)
