"""Results on disk: append-only JSON Lines, one line per cell, never rewritten.

Each line is written whole with a single ``write`` and flushed to disk before
the next cell starts, so a killed or interrupted run loses nothing it had
already measured, and ``--resume`` can skip every cell that has a line.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

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


def load_rows(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> list[dict[str, Any]]:
    """Rows from JSONL files, directories of them, run ids (``<results_dir>/<id>.jsonl``) or row dicts."""
    if isinstance(results, (str, Path, dict)):
        results = [results]
    rows: list[dict[str, Any]] = []
    for item in results:
        if isinstance(item, dict):
            rows.append(item)
            continue
        p = Path(item)
        if p.is_dir():
            files = sorted(p.glob("*.jsonl"))
        elif p.is_file():
            files = [p]
        elif (Path(results_dir) / f"{item}.jsonl").is_file():
            files = [Path(results_dir) / f"{item}.jsonl"]
        else:
            raise FileNotFoundError(f"no results at {item!r}: not a file, a directory, or a run id in {results_dir}/")
        for f in files:
            rows.extend(read_rows(f))
    return rows


def load_results(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR):
    """Rows from files, directories or run ids as a pandas DataFrame, one row per cell.

    Nested fields are flattened with dots (``step_stats.median_s``); the long
    per-step series stay as lists.
    """
    import pandas as pd

    rows = load_rows(results, results_dir)
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
