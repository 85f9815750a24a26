"""Stored rows aggregated into *cells*: one impl at one (spec, batch), its repeats folded together.

This is the one place that decides what a cell's numbers are, so that the tables, plots, the
recommendation and ``reports.compare`` (which takes :func:`row_status` from here) all agree.

Rows are grouped by spec (name and hash), batch and impl. Rows with a ``scenario`` (a leak
anti-pattern) or a ``sweep`` key (a batch-size probe) are kept apart: they are evidence for the
diagnosis and the sweep map, never candidates for a recommendation.

Repeats of one (impl, spec, batch) are aggregated like this:

* step time: the median over repeats of each repeat's ``median_s`` (and likewise for the quartiles,
  the mean and the compile time);
* achieved TFLOP/s (dense and conv FLOPs of a step over its median time) and MFU: the median over repeats;
* peak memory: the largest peak of any repeat (a peak is a maximum);
* leak verdict: the worst of the repeats (``leak (confirmed)`` > ``leak (not confirmed)`` > ``inconclusive``
  > ``no leak``), shown with that repeat's slope and CI; only a confirmed leak makes a cell ineligible
  (``harness.diagnose.evidence``), and a row stored before confirmations existed counts as not confirmed;
* status: ``ok`` only when every repeat was ok;
* the 95% CI used by the tie rule: with one repeat, that repeat's t-interval of the mean; with several,
  the envelope of the per-repeat intervals (lowest low to highest high). The envelope is conservative on
  purpose: a winner is declared only when no repeat of a rival could overlap it.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable

from harness.diagnose.evidence import is_confirmed_leak, leak_label
from harness.diagnose.leak import power_line
from harness.measure.peak import mfu_fields
from harness.placement import device_model
from harness.row import Row, StepStats, parse_row
from reports.formatting import fmt_time

__all__ = ["ImplCell", "group_cells", "is_side_row", "median_of", "nested", "num", "row_status", "summarize_impl"]

_LEAK_RANK = {"leak (confirmed)": 3, "leak (not confirmed)": 2, "inconclusive": 1, "no leak": 0}


def is_side_row(row: dict[str, Any]) -> bool:
    """True for scenario and sweep rows, which are never candidates for a recommendation."""
    return bool(row.get("scenario")) or bool(row.get("sweep"))


def row_status(row: dict[str, Any]) -> str:
    status = row.get("status")
    if status in ("ok", "failed", "skipped"):
        return status
    return "ok" if isinstance(row.get("step_stats"), Mapping) else "failed"


def nested(d: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def median_of(values: Iterable[Any]) -> float | None:
    vals = [v for v in (num(x) for x in values) if v is not None]
    return statistics.median(vals) if vals else None


@dataclass
class ImplCell:
    """One impl at one (spec, batch): its repeats aggregated (see the module docstring)."""

    impl: str
    label: str
    rows: list[Row]
    status: str
    failure_kind: str | None = None
    failure_message: str = ""
    n_repeats: int = 0
    n_ok: int = 0
    median_s: float | None = None
    q1_s: float | None = None
    q3_s: float | None = None
    mean_s: float | None = None
    ci_low_s: float | None = None
    ci_high_s: float | None = None
    samples_per_s: float | None = None
    compile_s: float | None = None
    peak_bytes: float | None = None
    cpu_standin: bool = False
    leak_verdict: str | None = None
    slope: float | None = None
    slope_ci_low: float | None = None
    slope_ci_high: float | None = None
    leak_reason: str = ""
    leak_cause: dict[str, Any] = field(default_factory=dict)
    #: True for a leak its confirmation phase confirmed, False for any other leak, None for no leak
    leak_confirmed: bool | None = None
    #: what the row says: "leak (confirmed)", "leak (not confirmed)", "inconclusive", "no leak"
    leak_label: str | None = None
    #: the evidence that decided ("rss", "heap", "compile") and the threshold used (None on old rows)
    leak_evidence: list[str] = field(default_factory=list)
    leak_threshold: float | None = None
    #: what the deciding series could see ("no leak above 3.4 KiB/batch", "could not rule out 23.2 KiB/batch in
    #: 12 steps": ``harness.diagnose.leak.power_line``), and the smallest leak it flags with 80% power
    leak_power: str = ""
    leak_detectable: float | None = None
    preflight_estimate: float | None = None
    #: achieved dense + conv TFLOP/s of a step (median over repeats); None for rows that predate FLOP counts
    tflops: float | None = None
    #: that rate over the run's measured float32 matmul peak (median over repeats)
    mfu: float | None = None
    #: the framework's compute alone (batches staged on the device before the clock); on CPU = median_s
    device_median_s: float | None = None
    #: True where device_step was timed apart (an accelerator and a build that stages batches)
    device_step_timed: bool = False
    #: the loop that trained the row ("step", or Keras' "fit" / "train_on_batch")
    train_loop: str | None = None
    #: whether every ok repeat's compile step loaded its executable from the run's cache (None: cannot tell)
    compile_cached: bool | None = None
    #: energy over the steady phase (``harness.measure.energy``): joules a step and samples a joule, the median
    #: over repeats; None with ``energy_absent`` saying why where nothing measured it (no NVML, no RAPL, old rows)
    joules_per_step: float | None = None
    samples_per_joule: float | None = None
    energy_source: str | None = None
    energy_absent: str = ""

    @property
    def eligible(self) -> bool:
        return self.status == "ok" and not self.confirmed_leak and self.median_s is not None

    @property
    def confirmed_leak(self) -> bool:
        return self.leak_verdict == "leak" and self.leak_confirmed is True

    @property
    def unconfirmed_leak(self) -> bool:
        return self.leak_verdict == "leak" and self.leak_confirmed is not True

    @property
    def has_ci(self) -> bool:
        return self.ci_low_s is not None and self.ci_high_s is not None

    def ci_text(self) -> str:
        return f"{fmt_time(self.ci_low_s)}–{fmt_time(self.ci_high_s)}" if self.has_ci else "n/a"


def summarize_impl(rows: list[Row | dict[str, Any]]) -> ImplCell:
    """Aggregate the repeats of one impl at one (spec, batch), read as typed rows (``harness.row``)."""
    if not rows:
        raise ValueError("no rows to summarise")
    typed = [parse_row(r) for r in rows]
    first = typed[0].identity
    impl = str(first.impl or "?")
    cell = ImplCell(impl=impl, label=str(first.row or impl), rows=typed, status="ok", n_repeats=len(typed))
    statuses = [row_status(r) for r in typed]
    ok = [r for r, s in zip(typed, statuses, strict=True) if s == "ok"]
    cell.n_ok = len(ok)
    cell.status = "ok" if all(s == "ok" for s in statuses) else "failed" if "failed" in statuses else "skipped"
    if cell.status != "ok":
        bad = next(r for r, s in zip(typed, statuses, strict=True) if s == cell.status)
        cell.failure_kind = bad.outcome.failure_kind or cell.status
        cell.failure_message = str(bad.outcome.failure_message or "")
        if len(typed) > 1:
            cell.failure_message += f" ({statuses.count(cell.status)} of {len(typed)} repeats)"
    if ok:
        _timing(cell, ok)
        _memory_and_leak(cell, ok)
        _energy(cell, ok)
    cell.preflight_estimate = median_of((r.preflight or {}).get("estimate_bytes") for r in typed)
    return cell


def _timing(cell: ImplCell, ok: list[Row]) -> None:
    """Step time, its CI, compile, FLOP rate and MFU of the ok repeats."""
    st = [r.timing.step_stats or StepStats() for r in ok]
    cell.median_s = median_of(s.median_s for s in st)
    cell.q1_s = median_of(s.q1_s for s in st)
    cell.q3_s = median_of(s.q3_s for s in st)
    cell.mean_s = median_of(s.mean_s for s in st)
    lows, highs = [num(s.ci95_low_s) for s in st], [num(s.ci95_high_s) for s in st]
    if all(v is not None for v in lows + highs):
        cell.ci_low_s, cell.ci_high_s = min(lows), max(highs)
    batch = num(ok[0].identity.batch)
    cell.samples_per_s = batch / cell.median_s if batch and cell.median_s else None
    cell.compile_s = median_of(r.compile.compile_s for r in ok)
    cell.device_median_s = median_of(r.timing.device_step_stats.median_s for r in ok if r.timing.device_step_stats)
    cell.device_step_timed = any(str(r.timing.device_step_source or "").startswith("batches staged") for r in ok)
    cell.train_loop = ok[0].timing.train_loop
    cached = [r.compile.compile_cached for r in ok]
    cell.compile_cached = None if any(c is None for c in cached) else all(cached)
    cell.tflops = median_of((r.flops.tflops or {}).get("matmul_step") for r in ok)
    cell.mfu = median_of(_row_mfu(r) for r in ok)


def _memory_and_leak(cell: ImplCell, ok: list[Row]) -> None:
    """The largest peak of any repeat, and the worst repeat's leak verdict."""
    peaks = [v for v in (num(r.memory.peak_bytes) for r in ok if r.memory) if v is not None]
    cell.peak_bytes = max(peaks) if peaks else None
    cell.cpu_standin = any(r.memory and r.memory.cpu_standin for r in ok)
    worst = max(ok, key=lambda r: _LEAK_RANK.get(leak_label(r["leak"] if r.leak else None), -1))
    leak = worst["leak"] if worst.leak else {}
    cell.leak_verdict = leak.get("verdict")
    cell.leak_confirmed = True if is_confirmed_leak(leak) else (False if leak.get("verdict") == "leak" else None)
    cell.leak_label = leak_label(leak) if leak.get("verdict") else None
    cell.leak_evidence = list(leak.get("evidence") or [])
    cell.leak_threshold = num(leak.get("threshold_bytes_per_batch"))
    cell.slope = num(leak.get("slope_bytes_per_batch"))
    cell.slope_ci_low = num(leak.get("slope_ci_low"))
    cell.slope_ci_high = num(leak.get("slope_ci_high"))
    cell.leak_reason = str(leak.get("reason") or "")
    cell.leak_cause = leak.get("cause") or {}
    cell.leak_power = power_line(leak)
    cell.leak_detectable = num(leak.get("detectable_bytes_per_batch"))


def _energy(cell: ImplCell, ok: list[Row]) -> None:
    """Joules a step where every ok repeat measured them; else the first repeat's reason there is none."""
    energies = [r.energy for r in ok]
    if energies and all(e is not None and e.joules_per_step is not None for e in energies):
        cell.joules_per_step = median_of(e.joules_per_step for e in energies)
        cell.samples_per_joule = median_of(e.samples_per_joule for e in energies)
        cell.energy_source = energies[0].source
    else:
        cell.energy_absent = next((e.absent_reason for e in energies if e is not None and e.absent_reason),
                                  "not measured")


def _row_mfu(row: Row) -> float | None:
    """The row's MFU of a step: stored by the runner, else from the fingerprint's matmul peak."""
    stored = num(row.flops.mfu_step)
    if stored is not None:
        return stored
    peak = (row.fingerprint or {}).get("matmul_peak")
    return num(mfu_fields(row.flops.tflops, peak, row.build.device_kind)["mfu"]["step"]) if peak else None


class SpecKey(tuple):
    """A group's key, ``(spec_name, spec_hash, kmer)`` as before the precision axis (it unpacks to three), with
    the rows' ``precision`` beside it: a bf16 spec has a hash of its own, and its title and its place in the
    answer come from this."""

    precision: str

    def __new__(cls, name: str, spec_hash: str, kmer: int | None, precision: str = "fp32") -> SpecKey:
        key = super().__new__(cls, (name, spec_hash, kmer))
        key.precision = precision
        return key


PRECISION_ORDER = {"fp32": 0, "tf32": 1, "bf16": 2}


def group_cells(rows: list[Row | dict[str, Any]]) -> dict[tuple, dict[int, list[ImplCell]]]:
    """Plain rows grouped as {SpecKey(spec_name, spec_hash, kmer): {batch: [ImplCell, ...]}}, a spec's precisions
    next to each other, fp32 first.

    Rows measured on different device models (a Slurm run over nodes with different GPUs, issue 24) never share a
    group, so never a table or a recommendation: where the rows span more than one model, each group's name says
    its device ("dense on NVIDIA H100 80GB HBM3 (driver 550.54)", ``harness.placement.device_model``)."""
    parsed = [r for r in map(parse_row, rows) if not r.is_probe]
    devices = {device_model(r.fingerprint) for r in parsed}
    by: dict[tuple, dict[int, dict[str, list[Row]]]] = {}
    for r in parsed:
        ident = r.identity
        name = str(ident.spec_name or "?") + (f" on {device_model(r.fingerprint)}" if len(devices) > 1 else "")
        key = SpecKey(name, str(ident.spec_hash or ""), ident.kmer, str(ident.precision))
        by.setdefault(key, {}).setdefault(int(ident.batch or 0), {}).setdefault(str(ident.impl), []).append(r)
    out: dict[tuple, dict[int, list[ImplCell]]] = {}
    for key in sorted(by, key=lambda k: (k[0], str(k[2]), PRECISION_ORDER.get(k.precision, 9), k[1])):
        out[key] = {}
        for batch in sorted(by[key]):
            out[key][batch] = _order([summarize_impl(v) for v in by[key][batch].values()])
    return out


def _order(cells: list[ImplCell]) -> list[ImplCell]:
    """Eligible rows fastest first, then ok-but-leaking, then failed and skipped."""
    def key(c: ImplCell):
        rank = 0 if c.eligible else 1 if c.status == "ok" else 2
        return rank, c.median_s if c.median_s is not None else math.inf, c.impl
    return sorted(cells, key=key)
