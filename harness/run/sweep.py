"""The largest batch each impl can train: doubling, then bisection.

Each probe is a short cell in its own worker (a few steps after the compile
step), so an OOM, an int32 abort or a host-memory kill ends only that probe.
The search assumes failure is monotone in the batch: once a batch fails,
every larger one is taken to fail too, which is how memory and int32 limits
behave. Every probe is stored as a row, so the report can draw the map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from harness.run.runner import Cell, Preflight, run_one
from harness.store import ResultStore

#: steps a probe runs after its compile step; enough to hit the steady-state peak
PROBE_STEPS = 3
#: the limits a sweep searches for: a probe that fails with one of these is the expected end of
#: the search, not a failure of the sweep (``skipped``: preflight says the batch cannot fit)
LIMIT_KINDS = frozenset({"device_oom", "host_oom", "int32_overflow", "timeout", "skipped",
                         # on Slurm (``--launcher slurm``): the job passed its --mem or its time limit
                         "slurm_out_of_memory", "slurm_timeout"})


@dataclass
class SweepResult:
    impl: str
    spec: str
    max_ok: int | None
    first_failure: int | None
    failure_kind: str | None
    probes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def problem(self) -> str | None:
        """Why this search gave no clean answer, or None: a probe failed for a reason other than
        the limits in :data:`LIMIT_KINDS`, or no batch trained at all."""
        odd = sorted({p["outcome"] for p in self.probes if p["outcome"] != "ok" and p["outcome"] not in LIMIT_KINDS})
        if odd:
            return f"{self.impl} {self.spec}: a probe failed with {', '.join(odd)}, not a memory, int32 or time limit"
        if self.max_ok is None:
            return f"{self.impl} {self.spec}: no batch trained (batch {self.first_failure}: {self.failure_kind})"
        return None


def search_max_batch(probe: Callable[[int], str], start: int = 8,
                     max_batch: int = 65536) -> tuple[int | None, int | None, list[tuple[int, str]]]:
    """Doubling from ``start`` until a probe fails or ``max_batch`` passes, then bisection.

    ``probe(batch)`` returns an outcome, ``"ok"`` or a failure kind. Returns
    (largest ok batch, smallest failing batch, every probe in order).
    """
    seen: list[tuple[int, str]] = []

    def run(b: int) -> bool:
        outcome = probe(b)
        seen.append((b, outcome))
        return outcome == "ok"

    lo, hi = 0, None
    b = max(1, start)
    while b <= max_batch:
        if run(b):
            lo = b
            b *= 2
        else:
            hi = b
            break
    if hi is None:
        if lo < max_batch and run(max_batch):
            return max_batch, None, seen
        if lo == max_batch:
            return lo, None, seen
        hi = max_batch
    if lo == 0 and hi > 1:
        lo_probe = 1
        if not run(lo_probe):
            return None, lo_probe, seen
        lo = lo_probe
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            lo = mid
        else:
            hi = mid
    return (lo or None), hi, seen


def sweep_impl(impl: str, spec, kmer: int, store: ResultStore, fingerprint: dict[str, Any],
               start: int = 8, max_batch: int = 65536, timeout_s: float = 300.0,
               preflight: Preflight | None = None, memory_limit_bytes: int | None = None,
               on_probe: Callable[[int, dict], None] | None = None,
               run_cell: Callable[[Cell], dict[str, Any]] | None = None) -> SweepResult:
    """Search one impl, writing every probe to ``store`` as it finishes. ``run_cell`` runs a probe and returns its
    row unstored (default: a local worker, ``run_one``; ``--launcher slurm``: one Slurm job per probe,
    ``harness.run.slurm.launcher.slurm_cell_runner``)."""
    rows: dict[int, dict[str, Any]] = {}

    def probe(batch: int) -> str:
        cell = Cell(impl, spec, kmer, batch, steps=PROBE_STEPS, timeout_s=timeout_s, heap="off",
                    warmup_steps=1, steps_per_window=1, shared_init=False, sweep=True)
        row = run_cell(cell) if run_cell else run_one(cell, fingerprint, preflight, memory_limit_bytes)
        outcome = "ok" if row["status"] == "ok" else row["failure_kind"]
        row["sweep"] = {"impl": impl, "probe_batch": batch, "outcome": outcome}
        store.append(row)
        rows[batch] = row
        if on_probe:
            on_probe(batch, row)
        return outcome

    max_ok, first_fail, seen = search_max_batch(probe, start, max_batch)
    kind = rows[first_fail]["failure_kind"] if first_fail in rows else None
    return SweepResult(impl, spec.name, max_ok, first_fail, kind,
                       [{"batch": b, "outcome": o} for b, o in seen])
