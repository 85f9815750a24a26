"""Results on disk: append-only JSON Lines, one line per cell, never rewritten.

Each line is written whole with a single ``write`` and flushed to disk before
the next cell starts, so a killed or interrupted run loses nothing it had
already measured, and ``--resume`` can skip every cell that has a line.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from harness.spec import Settings

RESULT_SCHEMA_VERSION = 1
DEFAULT_RESULTS_DIR = Path("results")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha1(os.urandom(8)).hexdigest()[:6]


def cell_key(impl: str, spec_hash: str, batch: int, repeat: int, steps: int, extra: dict | None = None) -> str:
    """Identity of a cell for ``--resume``: everything that changes what is measured."""
    payload = json.dumps({"impl": impl, "spec": spec_hash, "batch": batch, "repeat": repeat, "steps": steps,
                          **(extra or {})}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ResultStore:
    """``DIR/RUN_ID.jsonl``: one run's rows."""

    def __init__(self, root: str | Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = run_id
        self.path = self.root / f"{run_id}.jsonl"

    @classmethod
    def latest(cls, root: str | Path) -> ResultStore | None:
        files = sorted(Path(root).glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
        return cls(root, files[-1].stem) if files else None

    def append(self, row: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"schema_version": RESULT_SCHEMA_VERSION, "run_id": self.run_id, **row},
                          default=_default, allow_nan=True) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def rows(self) -> list[dict[str, Any]]:
        return list(read_rows(self.path)) if self.path.exists() else []

    def done_keys(self) -> set[str]:
        return {r["cell_key"] for r in self.rows() if "cell_key" in r}


def read_rows(path: str | Path) -> Iterable[dict[str, Any]]:
    """Rows of one file; a torn last line (power cut mid-write) is skipped, not fatal."""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("schema_version", 0) > RESULT_SCHEMA_VERSION:
                raise ValueError(f"{path} was written by a newer vaebench (schema {row['schema_version']})")
            yield row


def load_results(paths: str | Path | list[str | Path]):
    """Rows from files or directories as a pandas DataFrame, one row per cell.

    Nested fields are flattened with dots (``step_stats.median_s``); the long
    per-step series stay as lists.
    """
    import pandas as pd

    if not isinstance(paths, list):
        paths = [paths]
    files: list[Path] = []
    for p in map(Path, paths):
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    rows = [r for f in files for r in read_rows(f)]
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize(rows, max_level=3)


def _default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


# ---------------------------------------------------------------------- fingerprint


#: variables a caller may set that change speed or memory (thread pools, allocators); the worker
#: inherits them, so a row records them (``nox -s tests`` caps threads at one, for example)
PERFORMANCE_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS", "TF_NUM_INTRAOP_THREADS",
                   "TF_NUM_INTEROP_THREADS", "MALLOC_ARENA_MAX", "LD_PRELOAD", "CUDA_VISIBLE_DEVICES")


def machine_fingerprint(settings: Settings) -> dict[str, Any]:
    """What the parent knows about the machine; the worker adds framework versions."""
    import psutil

    from harness.launch import fairness_env
    from harness.probes import gpu_inventory

    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
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


def _cpu_model() -> str:
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
                             cwd=Path(__file__).resolve().parent.parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None
