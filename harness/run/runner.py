"""The matrix: plan cells, run each in its own worker, write one row per cell.

Like optimum-benchmark's launcher, the runner knows nothing of frameworks: it
hands a task to ``harness.run.launch`` and turns whatever comes back (a result, an
exception, a signal, a timeout) into a row. No failure stops the matrix, and
no finished row is ever lost: each is on disk before the next cell starts. The
run's lock is held while it writes, so no second process adds to the same run.

Repeats are interleaved (A B C A B C, not A A B B C C) so that slow drift of
the machine (thermal, other tenants) falls on every impl alike.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.adapter import BUILTIN, impl_label, is_installed, not_installed_message
from harness.diagnose.evidence import leak_label
from harness.diagnose.failures import Failure, classify
from harness.measure.fingerprint import machine_fingerprint
from harness.measure.peak import mfu_fields
from harness.row import DEFAULT_LAUNCHER, DEFAULT_PRECISION
from harness.run.compile_cache import compile_cache_env, make_cache_dir
from harness.run.launch import run_worker
from harness.run.peak import measured_peak
from harness.run.task import CellTask
from harness.run.walltime import EXIT_PHASE, wall_breakdown
from harness.spec.schema import VAESpec, canonical_kmer_count
from harness.store import DONE_STATUSES, ResultStore, RowNotStored, StoreError, cell_key

DEFAULT_TIMEOUT_S = 900.0
#: a matrix budget never gives a cell less than this
MIN_CELL_BUDGET_S = 5.0


#: the worker's schedule and loop options a cell may set; each is part of the cell's identity when set
#: (None leaves the worker's default, and the key as it was before the option existed)
TASK_OPTIONS = ("warmup_steps", "steps_per_window", "heap_steps", "shared_init", "sweep", "loop", "confirm",
                "confirm_steps", "confirm_max_s", "leak_steps")


@dataclass
class Cell:
    impl: str
    spec: VAESpec
    kmer: int | None
    batch: int
    repeat: int = 0
    steps: int = 200
    scenario: str | None = None
    inject_leak_bytes: int = 0
    data: str | None = None
    columns: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    heap: str = "auto"
    #: the numeric precision the cell trains in (``harness.row.PRECISIONS``): the spec's ``settings.precision``
    #: (``__post_init__`` keeps the two one fact); it joins the key only when it is another than fp32 (old keys stay
    #: valid; a bf16 spec's hash differs as well)
    precision: str = DEFAULT_PRECISION
    #: the worker's schedule overrides (``CellTask``): a max-batch sweep probe sets the first five
    warmup_steps: int | None = None
    steps_per_window: int | None = None
    heap_steps: int | None = None
    shared_init: bool | None = None
    sweep: bool | None = None
    #: the training loop to time (Keras: "fit" or "train_on_batch"); None is the build's default
    loop: str | None = None
    #: the leak confirmation (``harness.run.confirm``): its mode, steps and time cap; None is the default
    confirm: str | None = None
    confirm_steps: int | None = None
    confirm_max_s: float | None = None
    #: the leak phase's steps (``harness.run.phases.leak``); None sizes it to the cell's threshold
    leak_steps: int | None = None
    #: seconds this cell may spend (set by ``run_matrix`` from a matrix budget); not part of its identity
    time_budget_s: float | None = None
    #: the run's shared compilation cache (set by ``run_matrix``); not part of the cell's identity
    compile_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision != DEFAULT_PRECISION and self.spec.settings.precision == DEFAULT_PRECISION:
            self.spec = self.spec.with_settings(precision=self.precision, tf32=self.precision == "tf32")
        self.precision = self.spec.settings.precision

    def options(self) -> dict[str, Any]:
        """The task options this cell sets (not None), by name."""
        return {name: getattr(self, name) for name in TASK_OPTIONS if getattr(self, name) is not None}

    @property
    def key(self) -> str:
        ident = {"scenario": self.scenario, "leak": self.inject_leak_bytes, "data": self.data,
                 "columns": self.columns, **self.options()}
        if self.precision != DEFAULT_PRECISION:
            ident["precision"] = self.precision
        return cell_key(self.impl, self.spec.hash, self.batch, self.repeat, self.steps, ident)

    @property
    def label(self) -> str:
        extra = f" {self.scenario}" if self.scenario else ""
        return f"{impl_label(self.impl)} {self.spec.name} k={self.kmer} b={self.batch} r{self.repeat}{extra}"

    def task(self) -> CellTask:
        """The worker's task: the cell's fields, and the options it sets."""
        return CellTask(spec=self.spec.to_dict(), kmer=self.kmer, batch=self.batch, steps=self.steps,
                        scenario=self.scenario, inject_leak_bytes=self.inject_leak_bytes, data=self.data,
                        columns=self.columns, heap=self.heap, time_budget_s=self.time_budget_s,
                        deadline_s=self.timeout_s, **self.options())


def plan_cells(impls: list[str], specs: list[VAESpec], kmer: int | None, batches: list[int], repeats: int = 1,
               **kwargs: Any) -> list[Cell]:
    """Every cell, repeats outermost so that impls interleave. A spec that ``kmer`` does not size (a
    fixed-length preset such as masked-multiomics) gets no k: its rows say so, and it trains on its own data."""
    return [Cell(impl, spec, cell_kmer(spec, kmer), batch, repeat, **kwargs)
            for repeat in range(repeats) for spec in specs for batch in batches for impl in impls]


def cell_kmer(spec: VAESpec, kmer: int | None) -> int | None:
    """``kmer`` when the spec's input is its k-mer profile, else None."""
    return kmer if kmer is not None and canonical_kmer_count(kmer) == spec.input_length else None


#: why a tf32 cell is not run without a GPU
TF32_ON_CPU = ("tf32 is float32 on a CPU (TF32 is the tensor-core matmul format of NVIDIA GPUs from Ampere on): "
               "this cell's fp32 row is its measurement")


#: a preflight check returns None (go ahead) or a one-line reason to skip
Preflight = Callable[[Cell], "dict[str, Any] | None"]


@dataclass
class ResumePlan:
    """What ``--resume`` does with a run's cells: which are done, which failed ones run again, which are new."""

    todo: list[Cell]
    done: int
    retried: int
    kept_failed: int

    def summary(self) -> str:
        kept = f", {self.kept_failed} failed kept as done (--keep-failed)" if self.kept_failed else ""
        return (f"{self.done} cell(s) skipped as done (ok or skipped), {self.retried} failed cell(s) retried{kept}, "
                f"{len(self.todo) - self.retried} not run before")


def plan_resume(cells: list[Cell], store: ResultStore, keep_failed: bool = False) -> ResumePlan:
    """Split ``cells`` by their latest row in ``store``: ok or skipped is done; failed runs again
    (or counts as done with ``keep_failed``); no row yet runs."""
    latest = {r.identity.cell_key: r.status for r in store.latest_rows() if r.identity.cell_key}
    done = store.done_keys(keep_failed=keep_failed)
    todo = [c for c in cells if c.key not in done]
    failed = [c for c in cells if c.key in latest and latest[c.key] not in DONE_STATUSES]
    return ResumePlan(todo, len(cells) - len(todo) - (len(failed) if keep_failed else 0),
                      0 if keep_failed else len(failed), len(failed) if keep_failed else 0)


def run_matrix(cells: list[Cell], store: ResultStore, resume: bool = False, preflight: Preflight | None = None,
               progress: bool = True, memory_limit_bytes: int | None = None,
               budget_s: float | None = None, runnable: set[str] | None = None,
               keep_failed: bool = False, peak: bool = False, refresh_peak: bool = False) -> list[dict[str, Any]]:
    """Run every cell not already done in ``store`` (with ``resume``) and return the new rows.

    With ``resume``, a cell whose latest row is ok or skipped is skipped and a failed one runs
    again (its new row follows the old one; readers take the latest), unless ``keep_failed``.
    The run's lock is held throughout (see :meth:`ResultStore.lock`).

    ``budget_s``: seconds for all ``runnable`` cells (keys) together. Each is given what is
    left divided by the runnable cells still to come, so time a fast cell leaves over
    goes to the slow ones after it.

    ``peak``: the device's matmul peak, the best among the installed frameworks (measured once per
    machine and cached, ``harness.run.peak``), put in the fingerprint, so every row carries its MFU.
    ``refresh_peak`` times it again though cached (``--remeasure-peak``: the machine was busy the first time,
    and a peak taken under load is too low and would stay cached).
    Every cell shares the run's compilation cache (``harness.run.compile_cache``).
    """
    with store.writing():
        todo = plan_resume(cells, store, keep_failed).todo if resume else list(cells)
        try:  # before the peak and any cell: a cache path that cannot be made is one line, not a cell's traceback
            shared_cache = make_cache_dir(store.root, store.run_id) if todo else None
        except OSError as exc:
            raise StoreError(str(exc)) from exc
        fingerprint = machine_fingerprint(cells[0].spec.settings) if cells else {}
        if peak and cells and todo:
            # one peak per precision the cells train in, each in that precision's dtype (a bf16 row's MFU is
            # taken against a bf16 product); a tf32 cell skipped on a CPU needs none
            device = "gpu" if fingerprint.get("gpus") else "cpu"
            first = {c.precision: c.spec.settings for c in reversed(todo)
                     if not (c.precision == "tf32" and device == "cpu")}
            fingerprint["matmul_peaks"] = {prec: measured_peak(settings, device, refresh=refresh_peak)
                                           for prec, settings in first.items()}
            fingerprint["matmul_peak"] = fingerprint["matmul_peaks"].get(
                cells[0].precision, next(iter(fingerprint["matmul_peaks"].values()), None))
        for cell in todo:
            cell.compile_cache = cell.compile_cache or shared_cache
        rows: list[dict[str, Any]] = []
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        bar = _Progress(len(cells), len(cells) - len(todo), enabled=progress)
        try:
            start = time.perf_counter()
            pending = [c.key for c in todo if runnable is None or c.key in runnable]
            with bar:
                for cell in todo:
                    if budget_s and cell.key in pending:
                        left = budget_s - (time.perf_counter() - start)
                        cell.time_budget_s = round(max(MIN_CELL_BUDGET_S, left / len(pending)), 1)
                        pending.remove(cell.key)
                    row = run_one(cell, fingerprint, preflight, memory_limit_bytes, on_phase=bar.phase(cell))
                    store_or_stop(store, row, shared_cache)
                    rows.append(row)
                    bar.finished(cell, row)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return rows


class RunStopped(RuntimeError):
    """A measured row could not be stored, even after a retry: the run stops (exit 1) and says how to go on."""


def store_or_stop(store: ResultStore, row: dict[str, Any], own_files: Path) -> None:
    """Append ``row``; on a full disk (or any write error) free the run's own compilation cache, which lives
    beside the rows, and retry once; if that fails too, print the row to stderr as one JSON line, so what was
    measured can be saved by hand, and stop the run (issue 27: ENOSPC was a traceback, the row lost, a torn line
    left and the remaining cells never run)."""
    try:
        store.append(row)
        return
    except RowNotStored:
        shutil.rmtree(own_files, ignore_errors=True)
    try:
        store.append(row)
    except RowNotStored as exc:
        print(json.dumps(row, default=str, allow_nan=True), file=sys.stderr)
        raise RunStopped(f"{exc}; the row above (one JSON line) was measured but not stored. Free space on the disk "
                         f"of {store.root} (or copy {store.path.name} to one with room), then continue with --resume "
                         f"--run-id {store.run_id}") from None


def _sigterm_to_interrupt(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt


def run_one(cell: Cell, fingerprint: dict[str, Any], preflight: Preflight | None = None,
            memory_limit_bytes: int | None = None, on_phase: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """One cell, start to row. Raises KeyboardInterrupt (and writes nothing) if interrupted."""
    peaks = fingerprint.get("matmul_peaks")
    if peaks and cell.precision in peaks:  # the row's MFU and its fingerprint name its own precision's peak
        fingerprint = {**fingerprint, "matmul_peak": peaks[cell.precision]}
    base = {
        "cell_key": cell.key, "impl": cell.impl, "row": impl_label(cell.impl), "spec_name": cell.spec.name,
        "spec_hash": cell.spec.hash, "kmer": cell.kmer, "input_length": cell.spec.input_length,
        "batch": cell.batch, "repeat": cell.repeat, "steps": cell.steps, "scenario": cell.scenario,
        "precision": cell.precision, "launcher": DEFAULT_LAUNCHER, "node": socket.gethostname(),
        "inject_leak_bytes": cell.inject_leak_bytes, "data": cell.data, "columns": cell.columns,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint,
        "settings": cell.spec.to_dict()["settings"],
    }
    if cell.impl in BUILTIN and not is_installed(cell.impl):
        failure = Failure("framework_missing", not_installed_message(cell.impl))
        return {**base, "status": "failed", "failure_kind": failure.kind, "failure_message": failure.message,
                "stderr_tail": [], "wall_s": 0.0}
    if cell.precision == "tf32" and not fingerprint.get("gpus"):
        return {**base, "status": "skipped", "failure_kind": "skipped", "failure_message": TF32_ON_CPU,
                "stderr_tail": [], "wall_s": 0.0}
    if preflight is not None:
        verdict = preflight(cell)
        if verdict is not None and verdict.get("skip"):
            return {**base, "status": "skipped", "failure_kind": "skipped", "failure_message": verdict["reason"],
                    "preflight": verdict, "stderr_tail": [], "wall_s": 0.0}
        base["preflight"] = verdict
    phases: list[str] = []

    def track(event: dict) -> None:
        if "phase" in event:
            if not phases or phases[-1] != event["phase"]:
                phases.append(event["phase"])
        if on_phase:
            on_phase(event)

    device = "gpu" if fingerprint.get("gpus") else "cpu"
    env = compile_cache_env(cell.compile_cache, gpu=device == "gpu") if cell.compile_cache else None
    outcome = run_worker(cell.task(), cell.impl, cell.spec.settings, cell.timeout_s, on_event=track,
                         memory_limit_bytes=memory_limit_bytes, extra_env=env)
    # the phase a failure happened in: the worker's own ``exit`` marker comes after the result is written
    steps_phases = [p for p in phases if p != EXIT_PHASE]
    phase = steps_phases[-1] if steps_phases else None
    failure = classify(outcome.result, outcome.returncode, outcome.stderr_all or outcome.stderr_tail,
                       outcome.timed_out, outcome.memory_limit_hit, phase, device=device)
    status = "ok" if failure.ok else "skipped" if failure.kind == "skipped" else "failed"
    row = {**base, "status": status, "failure_kind": failure.kind,
           "failure_message": failure.message, "failure_phase": None if failure.ok else phase,
           "returncode": outcome.returncode, "stderr_tail": outcome.stderr_tail, "wall_s": outcome.wall_s,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if cell.scenario:
        from dataclasses import asdict

        from harness.diagnose.scenarios import SCENARIOS

        if cell.scenario in SCENARIOS:
            row["scenario_info"] = asdict(SCENARIOS[cell.scenario])
    result = outcome.result or {}
    if failure.ok and result.get("status") == "ok":
        row.update({k: v for k, v in result.items() if k != "status"})
        row["fingerprint"] = {**fingerprint, "frameworks": result.get("versions", {})}
        row.update(mfu_fields(row.get("tflops"), fingerprint.get("matmul_peak"), row.get("device_kind")))
    row["wall_breakdown"] = wall_breakdown(outcome.events, outcome.wall_s, result)
    return row


class _Progress:
    """A rich progress bar: one line for the matrix, the current cell and its phase."""

    def __init__(self, total: int, completed: int, enabled: bool) -> None:
        self.enabled = enabled
        self.total, self.completed = total, completed
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=False)
            self.task_id = self.progress.add_task("cells", total=total, completed=completed)

    def __enter__(self):
        if self.enabled:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.__exit__(*exc)

    def phase(self, cell: Cell) -> Callable[[dict], None]:
        def update(event: dict) -> None:
            if self.enabled:
                detail = event.get("phase", "")
                if "done" in event:
                    detail += f" {event['done']}/{event['steps']}"
                self.progress.update(self.task_id, description=f"{cell.label}: {detail}")

        update({"phase": "starting"})
        return update

    def finished(self, cell: Cell, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.progress.advance(self.task_id)
        if row["status"] == "ok":
            med = row["step_stats"]["median_s"] * 1e3
            leak = leak_label(row["leak"])
            self.console.log(f"[green]ok[/green] {cell.label}: compile {row['compile_s']:.2f}s, "
                             f"step {med:.2f} ms, {leak}")
        else:
            self.console.log(f"[red]{row['failure_kind']}[/red] {cell.label}: {row['failure_message'][:160]}")
