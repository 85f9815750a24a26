"""Fit the per-impl memory terms of :mod:`harness.diagnose.memory` from measured cells.

numpy and scipy only; ``python -m bench fit-memory`` is the command (``bench.fit_memory``).

**Cells.** Every ``ok`` row of a plain training cell (no scenario, no injected leak) that carries a
measured peak:

* GPU: the allocator's peak (``memory.device.peak_bytes``);
* CPU, rows of stand-in method 2 (``harness.measure.host_peak``): ``memory.peak_bytes``, unless the
  floor applied (then the figure is a bound, not a measurement, and the cell is left out);
* CPU, older rows (method 1 read the file-backed pages after the row's late imports): recomputed
  from the row's own fields as method 2 would have it, peak RSS less the import footprint, the last
  RssFile sample before the memory phase and the data held.

The framework-free terms (state and activation bytes) come from the current arithmetic
(:func:`harness.spec.presets.resolve_spec` at the row's k, checked against its spec hash), else from
the row's stored preflight estimate.

**Fit.** Per (impl, device kind), ``measured ≈ f_state * state + f_activation * activations +
constant``, minimising the squared *relative* error (the acceptance band is a ratio) with a small
ridge pull (``RIDGE``) toward the framework-free prior (1, 1, 0; the constant as a fraction of the
median cell). The pull settles what the cells cannot: dense and conv-final at k=7 have nearly the
same state, so state and constant are almost collinear, and a fit from one spec's batches alone
cannot split them at all. Factors are bounded at 0. Each cell keeps its fitted ratio, and where an
impl has 3 or more cells its leave-one-out ratio (the fit without that cell), an honest figure of
how far the model carries.

**The program term** (rows with measured footprints). A compiled step holds its program resident: XLA's
CPU executable and its buffer plan grow with the ops it runs, not with the tensors' sizes. Measured on
flax at k=5 (trimmed RssAnon across ``jit(...).lower(...).compile()``, no step run): dense's 16 layers
held 23 MiB, conv-strided's 26 held 45, resvae's 51 held 54, autoencoder-kl's 106 held 103. Without a
term for it, the small cells of the big programs read 0.5 held out (their program is most of the cell)
and the big-activation cells of small programs 1.5. So those fits add ``f_program`` bytes per op of the
step (``harness.diagnose.memory.count_program_ops``), prior 0: torch's eager step fits 0.1-0.2 MiB an op,
flax's and keras-jax's 2.0-2.5.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from harness.diagnose.memory import MODEL, estimate_memory, fitted_bytes
from harness.diagnose.preflight import tensor_table
from harness.measure.host_peak import held_bytes
from harness.row import Memory, Row, parse_row
from harness.spec.presets import resolve_spec
from harness.spec.schema import canonical_kmer_count

RIDGE = 0.01
PRIOR = (1.0, 1.0, 0.0)
#: the estimate / measured band a held-out cell should fall in (issue 25's acceptance)
BAND = (0.70, 1.30)


class FitError(ValueError):
    """The rows cannot be fitted; the message is one line for the user."""


def measured_peak(row: Row | dict[str, Any]) -> tuple[int | None, str]:
    """(bytes, how) for one row; (None, why not) where the row has no usable measured peak."""
    row = parse_row(row)
    m = row.memory or Memory()
    extra = m.rest
    if (m.device or {}).get("peak_bytes"):
        return int(m.device["peak_bytes"]), "allocator peak"
    if extra.get("standin_method", 1) >= 2:  # method 2 on: the row stores its peak (1 needs recomputing)
        if extra.get("peak_floor_applied"):
            return None, "the floor applied: a bound, not a measurement"
        v = m.peak_bytes
        return (int(v), "CPU stand-in peak RSS") if isinstance(v, (int, float)) and v > 0 else (None, "no peak")
    files = (row.host.rss_file if row.host else None) or []
    ident = row.identity
    if not files or not isinstance(m.peak_rss_bytes, (int, float)) or not isinstance(m.import_anon_bytes, (int, float)) \
            or not ident.kmer:
        return None, "no peak fields"
    # every CPU row so far ran the memory phase (one batch in hand); without it, a window of one is assumed
    held = held_bytes(int(ident.batch), canonical_kmer_count(int(ident.kmer)), int(extra.get("memory_phase_steps") or 0),
                      1, memmap=bool(ident.data))
    v = int(m.peak_rss_bytes) - int(m.import_anon_bytes) - int(files[-1]) - held
    return (v, "CPU stand-in recomputed from a method-1 row") if v > 0 else (None, "recomputed peak not positive")


def framework_free_terms(row: Row | dict[str, Any]) -> tuple[int, int, int] | None:
    """(state_bytes, activation_bytes, program_ops) of the row's cell from the current arithmetic, else from the
    row (whose estimate may predate ``program_ops``: 0 then)."""
    row = parse_row(row)
    ident = row.identity
    try:
        spec = resolve_spec(str(ident.spec_name), kmer=int(ident.kmer) if ident.kmer else None)
        if not ident.spec_hash or spec.hash == ident.spec_hash:
            est = estimate_memory(tensor_table(spec, int(ident.batch)))
            return est.state_bytes, est.activation_bytes, est.program_ops
    except Exception:  # noqa: BLE001 - a spec file no longer at hand: fall back to the row's figures
        pass
    e = (row.preflight or {}).get("estimate") or {}
    if isinstance(e.get("state_bytes"), (int, float)) and isinstance(e.get("activation_bytes"), (int, float)):
        return int(e["state_bytes"]), int(e["activation_bytes"]), int(e.get("program_ops") or 0)
    return None


def cells_from_rows(rows: Iterable[Row | dict[str, Any]], run_id: str | None = None,
                    device: str | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The fit's cells, and one line for each row left out; rows are read typed (``harness.row``)."""
    cells, skipped = [], []
    for r in map(parse_row, rows):
        ident, kind = r.identity, r.build.device_kind
        if run_id and ident.run_id != run_id:
            continue
        if device and kind != device:
            continue
        label = f"{ident.impl} {ident.spec_name} k={ident.kmer} b={ident.batch}"
        if not r.ok or ident.scenario or ident.inject_leak_bytes:
            skipped.append(f"{label}: not a plain ok training cell")
            continue
        meas, how = measured_peak(r)
        terms = framework_free_terms(r)
        if meas is None or terms is None:
            skipped.append(f"{label}: {how if meas is None else 'no estimate terms'}")
            continue
        fp = r.fingerprint or {}
        gpus = fp.get("gpus") or []
        cells.append({
            "impl": ident.impl, "device": kind or ("gpu" if gpus else "cpu"),
            "device_name": gpus[0].get("name") if gpus and kind == "gpu" else fp.get("cpu_model"),
            "spec": ident.spec_name, "kmer": ident.kmer, "batch": ident.batch, "run_id": ident.run_id,
            "measured_bytes": meas, "measured_source": how, "state_bytes": terms[0], "activation_bytes": terms[1],
            "program_ops": terms[2],
            "footprint_bytes": (r.memory.rest.get("runtime_footprint_bytes") if r.memory else None),
            "versions": r.build.versions or {}, "git_commit": fp.get("git_commit"),
        })
    return cells, skipped


def measured_constant(cells: list[dict[str, Any]]) -> bool:
    """Whether every cell carries its worker's runtime footprint: then the constant is measured, not fitted."""
    return bool(cells) and all(isinstance(c.get("footprint_bytes"), (int, float)) for c in cells)


#: the program term's unknown is fitted in MiB per op, so its column is of the other two's size
PROGRAM_UNIT = float(2**20)


def _ops(c: dict[str, Any]) -> float:
    return float(c.get("program_ops") or 0)


def _solve(cells: list[dict[str, Any]], ridge: float = RIDGE) -> dict[str, float]:
    """``f_state``, ``f_activation``, ``f_program`` (bytes per op) and ``constant_bytes``. With measured
    footprints the constant is the footprints' median and the three factors are fitted on what each cell
    measured past its own worker's footprint; the program term's prior is 0, so a framework that runs its step
    eagerly (no compiled program held) keeps it near 0. Without footprints (older rows) the constant is fitted
    and there is no program term."""
    from scipy.optimize import lsq_linear

    y = np.array([c["measured_bytes"] for c in cells], float)
    if measured_constant(cells):
        fp = np.array([c["footprint_bytes"] for c in cells], float)
        x = np.array([[c["state_bytes"], c["activation_bytes"], _ops(c) * PROGRAM_UNIT] for c in cells],
                     float) / y[:, None]
        pen = np.sqrt(ridge) * np.eye(3)
        sol = lsq_linear(np.vstack([x, pen]), np.concatenate([1.0 - fp / y, pen @ np.array(PRIOR)]),
                         bounds=(0.0, np.inf)).x
        return {"f_state": float(sol[0]), "f_activation": float(sol[1]), "f_program": float(sol[2] * PROGRAM_UNIT),
                "constant_bytes": float(np.median(fp))}
    scale = float(np.median(y))
    # unknowns: f_state, f_activation, constant as a fraction of the median cell
    x = np.array([[c["state_bytes"], c["activation_bytes"], scale] for c in cells], float) / y[:, None]
    pen = np.sqrt(ridge) * np.eye(3)
    a = np.vstack([x, pen])
    b = np.concatenate([np.ones(len(y)), pen @ np.array(PRIOR)])
    sol = lsq_linear(a, b, bounds=(0.0, np.inf)).x
    return {"f_state": float(sol[0]), "f_activation": float(sol[1]), "f_program": 0.0,
            "constant_bytes": float(sol[2] * scale)}


def _estimate(fit: dict[str, Any], c: dict[str, Any]) -> float:
    return fitted_bytes(fit, c["state_bytes"], c["activation_bytes"], _ops(c))


def fit_group(cells: list[dict[str, Any]], source: str | None = None, ridge: float = RIDGE) -> dict[str, Any]:
    """One (impl, device) fit with its cells' ratios (estimate / measured)."""
    sol = _solve(cells, ridge)
    measured = measured_constant(cells)
    fit = {"impl": cells[0]["impl"], "device": cells[0]["device"], "device_name": cells[0]["device_name"],
           "f_state": round(sol["f_state"], 4), "f_activation": round(sol["f_activation"], 4),
           "f_program": int(round(sol["f_program"])), "constant_bytes": int(round(sol["constant_bytes"])),
           "constant": "measured" if measured else "fitted",
           "versions": cells[0]["versions"], "source": source, "run_ids": sorted({str(c["run_id"]) for c in cells}),
           "git_commits": sorted({str(c["git_commit"]) for c in cells if c.get("git_commit")})}
    out = []
    for i, c in enumerate(cells):
        est = _estimate(fit, c)
        cell = {k: c[k] for k in ("spec", "kmer", "batch", "measured_bytes", "measured_source", "state_bytes",
                                  "activation_bytes")}
        cell["program_ops"] = int(_ops(c))
        cell.update(estimate_bytes=int(round(est)), ratio=round(est / c["measured_bytes"], 3))
        if measured:
            cell["footprint_bytes"] = int(c["footprint_bytes"])
        if len(cells) >= 3 and not measured:
            rest = cells[:i] + cells[i + 1:]
            cell["loo_ratio"] = round(_estimate(_solve(rest, ridge), c) / c["measured_bytes"], 3)
        out.append(cell)
    fit["cells"] = out
    if measured:
        _held_out_by_spec(fit, cells, ridge)
    return fit


def _held_out_by_spec(fit: dict[str, Any], cells: list[dict[str, Any]], ridge: float) -> None:
    """Leave one spec out: each spec's cells estimated from a fit to the other specs' cells, with the constant
    those other workers measured (what preflight would use), as ``held_out_ratio``; and the fit's interval,
    the least and greatest held-out ratio (``held_out``). An estimate E then stands for a measured peak
    between E / ratio_high and E / ratio_low."""
    specs = sorted({str(c["spec"]) for c in cells})
    if len(specs) < 2:
        return
    for spec in specs:
        rest = [c for c in cells if str(c["spec"]) != spec]
        g = _solve(rest, ridge)
        for c, cell in zip(cells, fit["cells"], strict=True):
            if str(c["spec"]) == spec:
                cell["held_out_ratio"] = round(_estimate(g, c) / c["measured_bytes"], 3)
    ratios = [cell["held_out_ratio"] for cell in fit["cells"]]
    fit["held_out"] = {"by": "spec", "specs": len(specs), "cells": len(ratios), "ratio_low": min(ratios),
                       "ratio_high": max(ratios),
                       "within_band": sum(BAND[0] <= r <= BAND[1] for r in ratios), "band": list(BAND)}


def fit_cells(cells: list[dict[str, Any]], source: str | None = None, ridge: float = RIDGE) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["impl"], c["device"]), []).append(c)
    if not groups:
        raise FitError("no measured cells to fit: need ok training rows with a memory peak")
    return [fit_group(sorted(g, key=lambda c: (str(c["spec"]), c["batch"])), source, ridge)
            for _, g in sorted(groups.items())]


def merge_factors(existing: dict[str, Any], fits: list[dict[str, Any]], command: str) -> dict[str, Any]:
    """The factors file with ``fits`` replacing any earlier fit of the same impl and device kind."""
    new = {(f["impl"], f["device"]) for f in fits}
    kept = [f for f in existing.get("fits", []) if (f.get("impl"), f.get("device")) not in new]
    return {
        "schema": 1,
        "model": MODEL,
        "about": "Per-impl memory terms for harness.diagnose.memory, fitted by `python -m bench fit-memory` "
                 "(harness.diagnose.memory_fit); each fit names its device, versions and the cells it came from.",
        "fits": sorted(kept + fits, key=lambda f: (f["device"], f["impl"])),
        "commands": sorted(set(existing.get("commands", [])) | {command}),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_factors(path: str | Path, data: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
