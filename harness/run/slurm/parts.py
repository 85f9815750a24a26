"""Part files: how a row measured on a node reaches the run's store, whole and exactly once.

Why not append on the node: the run's JSONL has one writer, the process holding its lock (``harness.store``), and
an ``flock`` across a cluster's shared filesystem is not to be trusted. So the node writes its row to
``<results>/parts/<run-id>/<cell-key>.json`` atomically (a temporary file, fsynced, then ``os.replace``: a reader
sees no file or the whole row), and the submitting process merges it into the store under the lock, then removes
it. A submitting process that died leaves its parts behind; ``--resume`` merges them first. A part already in
the store (the merger died between the append and the unlink) is recognised by its cell, job and start time,
and removed without a second row.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

PARTS_DIRNAME = "parts"


def parts_dir(root: str | Path, run_id: str) -> Path:
    return Path(root) / PARTS_DIRNAME / run_id


def part_path(root: str | Path, run_id: str, cell_key: str) -> Path:
    return parts_dir(root, run_id) / f"{cell_key}.json"


def write_part(path: str | Path, row: dict[str, Any]) -> Path:
    """Write ``row`` to ``path`` atomically: a temporary file beside it, fsynced, renamed over it, the folder
    fsynced, so the submitting process never reads half a row."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(row, default=str, allow_nan=True).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def read_part(path: Path) -> dict[str, Any] | None:
    """The row in a part file, or None when it is gone or not a JSON object (never half-written: see above)."""
    try:
        row = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row if isinstance(row, dict) else None


def part_identity(row: Any) -> tuple:
    """What makes a merged part the same row as one in the store: its cell, its job and when it started."""
    get = row.get
    return get("cell_key"), get("job_id"), get("started_at")


def merge_part(store, path: Path, stored: set[tuple], append: Callable[[dict[str, Any]], None]) -> dict | None:
    """Merge one part into ``store`` (whose lock the caller holds) with ``append``; return the row, or None when
    there was nothing new (gone, unreadable, or already stored: ``stored`` holds the identities of the store's
    rows and gains this one). The file is removed once its row is in the store."""
    row = read_part(path)
    if row is None:
        return None
    ident = part_identity(row)
    if ident not in stored:
        append(row)
        stored.add(ident)
        fresh = True
    else:
        fresh = False
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return row if fresh else None


def stored_identities(store) -> set[tuple]:
    """The identities of every row the store holds, retries included."""
    return {part_identity(r) for r in store.rows()}


def leftover_parts(root: str | Path, run_id: str) -> list[Path]:
    """The parts a run's folder holds (a died submitting process's), oldest first."""
    folder = parts_dir(root, run_id)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)


def merge_leftovers(store, append: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Merge the parts a died submitting process left in the run's folder (``--resume``, with either launcher);
    the caller holds the store's lock. Returns the new rows."""
    import sys

    stored = stored_identities(store)
    rows = [merge_part(store, path, stored, append) for path in leftover_parts(store.root, store.run_id)]
    rows = [r for r in rows if r is not None]
    if rows:
        print(f"slurm: merged {len(rows)} row(s) a previous submitting process left in part files", file=sys.stderr)
    return rows
