"""The machine a row was measured on: CPU, cores, RAM, GPUs, git commit and every pinned setting.

The parent takes it once per run; each worker adds its framework versions. Every row carries it, so
two rows can be compared only when their fingerprints say they may be.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.measure.probes import gpu_inventory
from harness.spec.schema import Settings, fairness_env

#: variables a caller may set that change speed or memory (thread pools, allocators); the worker
#: inherits them, so a row records them (``nox -s tests`` caps threads at one, for example)
PERFORMANCE_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "TF_NUM_INTRAOP_THREADS",
                   "TF_NUM_INTEROP_THREADS", "MALLOC_ARENA_MAX", "LD_PRELOAD", "CUDA_VISIBLE_DEVICES",
                   "JAX_THREEFRY_PARTITIONABLE")


def machine_fingerprint(settings: Settings) -> dict[str, Any]:
    """What the parent knows about the machine; the worker adds framework versions."""
    import psutil

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "gpus": gpu_inventory(),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "pinned_settings": asdict(settings),
        "pinned_env": fairness_env(settings),
        "inherited_env": {k: os.environ[k] for k in PERFORMANCE_ENV if k in os.environ},
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[2])
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None
