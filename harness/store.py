"""Results on disk: append-only JSON Lines, one line per cell, never rewritten.

Each line is written whole with a single ``write`` and flushed to disk before
the next cell starts, so a killed or interrupted run loses nothing it had
already measured, and ``--resume`` can skip every cell that has a line.

Rules this module owns, so that every reader agrees:

* a run id is a plain file name (:func:`validate_run_id`); nothing is written for any other;
* one writer per run: :meth:`ResultStore.lock` holds ``flock`` on ``RUN_ID.lock`` beside the
  JSONL (the holder's pid inside) while a run writes; the kernel drops it when the holder
  exits, however it exits, so a lock file left by a killed run never blocks;
* a cell may have several rows (a failed cell retried by ``--resume``): the LATEST row per
  cell wins (:func:`latest_rows`), for the report, ``compare`` and the final table alike;
* ``--resume`` skips a cell whose latest row is ``ok`` or ``skipped`` and runs a failed one
  again (:meth:`ResultStore.done_keys`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from harness.files import not_regular
from harness.row import SCHEMA_VERSION, Row, RowError, parse_row

#: rows and curve records are written in the typed row's schema (``harness.row``); older lines are upgraded on load
RESULT_SCHEMA_VERSION = SCHEMA_VERSION
DEFAULT_RESULTS_DIR = Path("results")
#: statuses ``--resume`` counts as done; a ``failed`` cell runs again unless ``keep_failed``
DONE_STATUSES = frozenset({"ok", "skipped"})

_RUN_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class StoreError(ValueError):
    """The results store cannot be used as asked; the message is one line for the user."""


class ResultsDirError(StoreError):
    """The results directory cannot be created or written."""


class RunLocked(StoreError):
    """Another process is writing this run."""


class RowNotStored(StoreError):
    """A row could not be written (a full disk, a quota, an I/O error); the file is as it was before the
    attempt, with no torn line. The runner keeps the row, retries once, then stops the run (issue 27)."""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + hashlib.sha1(os.urandom(8)).hexdigest()[:6]


#: the results dir's stored files that are not a run's rows, by name (what each one is)
PROBE_CACHE_FILE = "int32-probes.jsonl"
NOT_ROWS = {PROBE_CACHE_FILE: "the int32 probe cache (python -m bench probe-int32)"}


def open_no_follow(path: Path, flags: int) -> int:
    """``os.open`` that refuses a symbolic link in the last component (``O_NOFOLLOW``), with a one-line
    StoreError: a lock or results file that is a link would have the file it points to truncated and
    overwritten (issue 27: a ``RUN.lock`` link to a user's file got the pid written into it)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; vaebench writes only regular files in a results dir: "
                             "remove the link or pick another --results") from None
        if exc.errno == errno.EISDIR:
            raise StoreError(f"{path} is a directory, where vaebench keeps a file: move it or pick another "
                             "--results") from None
        raise


def validate_run_id(run_id: Any) -> str:
    """A run id names files (``RUN_ID.jsonl``, ``RUN_ID.lock``), so it must be a plain name:
    letters, digits, ``-``, ``_`` and ``.``, not starting with ``.``, at most 200 characters."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise StoreError(f"run id {run_id!r} is not a plain name: use letters, digits, '-', '_' and '.' "
                         "(not starting with '.', at most 200 characters)")
    return run_id


#: the folder of a results dir that holds each run's compilation cache (``harness.run.compile_cache``)
CACHE_DIRNAME = "cache"


def check_results_dir(root: str | Path, compile_cache: bool = False) -> Path:
    """Create ``root`` and write and remove a probe file in it, or raise :class:`ResultsDirError`
    naming the path and the reason. Called before any cell runs, so that a results directory that
    cannot be written stops the run at once instead of losing its first row. With ``compile_cache`` (the verbs
    that run cells), a :data:`CACHE_DIRNAME` in it that is not a directory stops it too (the first cell's
    ``mkdir`` ended in a traceback)."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ResultsDirError(f"cannot write results to {root}: it is a file, not a directory")
    cache = root / CACHE_DIRNAME
    if compile_cache and (cache.is_symlink() or cache.exists()) and not cache.is_dir():
        raise ResultsDirError(f"cannot write results to {root}: {cache} must be a directory, where vaebench keeps "
                              f"each run's compilation cache; move what is there")
    probe = root / f".vaebench-probe-{os.getpid()}-{os.urandom(4).hex()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"vaebench probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            reason = f"{reason} (a part of the path is a file)"
        raise ResultsDirError(f"cannot write results to {root}: {reason}") from None
    return root


def cell_key(impl: str, spec_hash: str, batch: int, repeat: int, steps: int, extra: dict | None = None) -> str:
    """Identity of a cell for ``--resume``: everything that changes what is measured."""
    payload = json.dumps({"impl": impl, "spec": spec_hash, "batch": batch, "repeat": repeat, "steps": steps,
                          **(extra or {})}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def row_identity(row: dict[str, Any]) -> tuple | None:
    """What makes two rows the same cell: the run and the cell key (with the scenario and sweep
    marks, which real keys already contain, so hand-made rows with loose keys stay apart).
    None for a row without a key: such a row is never merged."""
    if "cell_key" not in row:
        return None
    return row.get("run_id"), row["cell_key"], row.get("scenario"), bool(row.get("sweep"))


def latest_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell: the LATEST row of each (a retry replaces the failure before it), in the
    order each cell first appeared. The one rule every reader of results uses."""
    out: list[dict[str, Any]] = []
    where: dict[tuple, int] = {}
    for row in rows:
        ident = row_identity(row)
        if ident is None:
            out.append(row)
        elif ident in where:
            out[where[ident]] = row
        else:
            where[ident] = len(out)
            out.append(row)
    return out


class ResultStore:
    """``DIR/RUN_ID.jsonl``: one run's rows, and ``DIR/RUN_ID.lock`` while a process writes them."""

    def __init__(self, root: str | Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = validate_run_id(run_id)
        self.path = self.root / f"{run_id}.jsonl"
        self.lock_path = self.root / f"{run_id}.lock"
        self._lock_fd: int | None = None

    @classmethod
    def latest(cls, root: str | Path) -> ResultStore | None:
        files = sorted((p for p in row_files(Path(root), say=False) if _RUN_ID.fullmatch(p.stem)),
                       key=lambda p: p.stat().st_mtime)
        return cls(root, files[-1].stem) if files else None

    # ---------------------------------------------------------------- the writer's lock

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self) -> ResultStore:
        """Take the run's lock, or raise :class:`RunLocked` naming the holder's pid. Idempotent."""
        if self._lock_fd is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            fd = open_no_follow(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "another process"
                raise RunLocked(f"run {self.run_id} in {self.root} is being written by {who} "
                                f"(lock {self.lock_path}); wait for it to finish or pass another --run-id") from None
            except OSError as exc:
                os.close(fd)
                raise StoreError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from None
            # a holder releasing unlinks the file; if that happened between our open and our
            # flock, we locked a file nobody else will see: start again on the new one
            try:
                current = os.stat(self.lock_path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return self

    def unlock(self) -> None:
        """Release the lock (remove the file while still holding it, then close)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(fd)

    @contextmanager
    def writing(self) -> Iterator[ResultStore]:
        """Hold the lock for the block, unless this store holds it already (then leave it held)."""
        if self._lock_fd is not None:
            yield self
            return
        self.lock()
        try:
            yield self
        finally:
            self.unlock()

    # ---------------------------------------------------------------- rows

    def append(self, row: Mapping[str, Any]) -> Row | None:
        """Write one row as one line and fsync it, under the run's lock, and return it typed.

        The line is the typed row's (``harness.row``, schema 2). A row the typed row refuses
        (a bug in whoever built it) is still written as given, with the reason in ``row_error``:
        a measured result is never dropped for its shape; None is returned then.
        A line torn by a power cut is closed first, so the torn part stays one unreadable line
        and this row its own readable one."""
        raw = {"schema_version": RESULT_SCHEMA_VERSION, "run_id": self.run_id,
               **(row.to_dict() if isinstance(row, Row) else row)}
        typed: Row | None
        try:
            typed = parse_row(raw)
            raw = typed.to_dict()
        except RowError as exc:
            typed, raw = None, {**raw, "row_error": str(exc)}
        line = json.dumps(raw, default=_default, allow_nan=True) + "\n"
        with self.writing():
            append_whole(self.path, line, "a row")
        return typed

    def rows(self) -> list[Row]:
        """Every row in the file, retries included, in the order written."""
        return load_rows(self.path, latest=False) if self.path.exists() else []

    def latest_rows(self) -> list[Row]:
        """One row per cell, the latest (see :func:`latest_rows`)."""
        return latest_rows(self.rows())

    def done_keys(self, keep_failed: bool = False) -> set[str]:
        """Cell keys ``--resume`` skips: those whose latest row is ok or skipped; with
        ``keep_failed``, every cell that has a row (failed cells are not run again)."""
        return {r.identity.cell_key for r in self.latest_rows()
                if r.identity.cell_key and (keep_failed or r.status in DONE_STATUSES)}


def _holder_pid(fd: int) -> int | None:
    """The pid a lock holder wrote into its lock file (it may be a moment behind its flock)."""
    for _ in range(20):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None


def read_rows(path: str | Path) -> Iterable[dict[str, Any]]:
    """The JSON objects of one file, as written (rows or curve records); a torn last line (power cut
    mid-write) is skipped, not fatal. Rows are read typed through :func:`load_rows`."""
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


def load_rows(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR, latest: bool = True) -> list[Row]:
    """The one loader of results: typed rows (``harness.row.Row``, older schemas upgraded) from JSONL
    files, directories of them, run ids (``<results_dir>/<id>.jsonl``) or row dicts.

    One row per cell of each run, the latest (:func:`latest_rows`); ``latest=False`` gives every
    row as written, retries included. A line that is not a row raises :class:`harness.row.RowError`
    naming the file and line."""
    if isinstance(results, (str, Path, Mapping)):
        results = [results]
    rows: list[Row] = []
    for item in results:
        if isinstance(item, Mapping):
            rows.append(parse_row(item))
            continue
        p = Path(item)
        if p.is_dir():
            files = row_files(p)
        elif p.is_file():
            files = [p]
        elif (Path(results_dir) / f"{item}.jsonl").is_file():
            files = [Path(results_dir) / f"{item}.jsonl"]
        elif p.exists():  # a FIFO, a socket or a device: opening it to read would block or fail deep down
            raise FileNotFoundError(f"no results at {item!r}: it is {not_regular(p)}, not a file")
        else:
            raise FileNotFoundError(f"no results at {item!r}: not a file, a directory, or a run id in {results_dir}/")
        for f in files:
            for n, raw in enumerate(read_rows(f), 1):
                try:
                    rows.append(parse_row(raw))
                except RowError as exc:
                    raise RowError(f"{f}: row {n}: {exc}") from None
    return latest_rows(rows) if latest else rows


def row_files(folder: Path, say: bool = True) -> list[Path]:
    """The run files of a results dir: every ``*.jsonl`` but the stored files that are not rows
    (:data:`NOT_ROWS`), each skipped one said on stderr in one line. Read as rows, the int32 probe cache
    made ``report DIR`` say "every cell failed", and ``run --resume`` append a cell row to it (issue 27)."""
    files = []
    for path in sorted(folder.glob("*.jsonl")):
        what = NOT_ROWS.get(path.name) or not_regular(path)  # a FIFO there hung ``report DIR`` at its read
        if what:
            if say:
                print(f"vaebench: skipped {path}: {what}, not result rows", file=sys.stderr)
            continue
        files.append(path)
    return files


def append_whole(path: Path, text: str, what: str) -> None:
    """Append ``text`` (whole JSON lines) to ``path`` and fsync it, or leave the file as it was.

    A line torn by a power cut is closed first, so the torn part stays one unreadable line and ``text`` its own
    readable lines. On a full disk, a quota or an I/O error the file is truncated back to its size before the
    attempt (no torn line) and ``RowNotStored`` says so in one line; a link or a directory at ``path`` is a
    ``StoreError`` (``open_no_follow``)."""
    try:
        fd = open_no_follow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC)
    except OSError as exc:
        raise RowNotStored(f"cannot open {path}: {exc.strerror or exc}") from None
    size = None
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            text = "\n" + text
        data = text.encode()
        if os.write(fd, data) != len(data):  # a short write is a full disk that said nothing
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync(fd)
    except OSError as exc:
        if size is not None:
            with suppress(OSError):
                os.ftruncate(fd, size)  # no torn line: the file is as it was
        raise RowNotStored(f"cannot write {what} to {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


#: training curves live beside a run's rows, one subdirectory down, so no glob of ``*.jsonl`` reads them as rows
CURVES_DIR = "curves"


def curves_path(root: str | Path, run_id: str) -> Path:
    """``<root>/curves/<run_id>.jsonl``: one record per (spec, impl) of ``bench curves`` for that run."""
    return Path(root) / CURVES_DIR / f"{validate_run_id(run_id)}.jsonl"


def append_curves(root: str | Path, run_id: str, records: list[dict[str, Any]]) -> Path:
    """Append curve records, one JSON line each, synced and never torn, as cell rows are (``append_whole``)."""
    path = curves_path(root, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RowNotStored(f"cannot make {path.parent}: {exc.strerror or exc}") from None
    append_whole(path, "".join(json.dumps({"schema_version": RESULT_SCHEMA_VERSION, "run_id": run_id, **rec},
                                          default=_default) + "\n" for rec in records), "curves")
    return path


def load_curves(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR) -> list[dict[str, Any]]:
    """Curve records stored beside the given results (files, directories or run ids, as ``load_rows``
    takes them): ``<dir>/curves/<id>.jsonl`` for each ``<dir>/<id>.jsonl``; the latest per (spec, impl)."""
    if isinstance(results, (str, Path, dict)):
        results = [results]
    files: list[Path] = []
    for item in results:
        if isinstance(item, dict):
            continue
        p = Path(item)
        if p.is_dir():
            files += sorted((p / CURVES_DIR).glob("*.jsonl"))
        elif p.is_file():
            files.append(p.parent / CURVES_DIR / p.name)
        else:
            files.append(Path(results_dir) / CURVES_DIR / f"{item}.jsonl")
    latest: dict[tuple, dict[str, Any]] = {}
    for f in files:
        if f.is_file():
            for rec in read_rows(f):
                latest[(rec.get("run_id"), rec.get("spec_hash"), rec.get("batch"), rec.get("curve", {}).get("impl"))] = rec
    return list(latest.values())


def load_results(results: Any, results_dir: str | Path = DEFAULT_RESULTS_DIR, latest: bool = True):
    """Rows from files, directories or run ids as a pandas DataFrame, one row per cell.

    Nested fields are flattened with dots (``step_stats.median_s``); the long
    per-step series stay as lists.
    """
    import pandas as pd

    rows = load_rows(results, results_dir, latest=latest)
    if not rows:
        return pd.DataFrame()
    return pd.json_normalize([r.to_dict() for r in rows], max_level=3)


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
