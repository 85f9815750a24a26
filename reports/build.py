"""One run's report: ``report.md``, a self-contained ``report.html`` and PNG plots, plus the index of runs.

Layout on disk::

    reports/out/index.md, index.html     every run built so far, newest first
    reports/out/<run-id>/report.md       reads on its own (GitHub tables, plots as image links)
    reports/out/<run-id>/report.html     one file: inline CSS, plots embedded as base64
    reports/out/<run-id>/plots/*.png
    reports/out/<run-id>/meta.json       what the index lists

This module only orchestrates: rows are loaded by ``harness.store.load_rows``, grouped once into cells by
``reports.cells`` (whose docstring says how repeats are aggregated), judged by ``reports.recommend``,
written by ``reports.sections`` into a ``reports.document.Doc`` and drawn by ``reports.plots``.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from harness.store import load_curves, load_rows
from reports.cells import group_cells, row_status
from reports.document import Doc
from reports.formatting import slugify
from reports.plots import impl_colors
from reports.section_answer import section_answer
from reports.section_batch import section_batch
from reports.section_curves import section_curves
from reports.sections import (
    device_text,
    params_index,
    section_diagnosis,
    section_environment,
    section_recommendation,
    section_sweep,
    section_table,
    spec_title,
    sweep_grids,
)
from reports.time_to_target import section_time_to_target, spec_targets

__all__ = ["build_report", "update_index"]

DEFAULT_OUT_ROOT = Path("reports/out")


def _run_date(rows: list[dict], run_id: str) -> str:
    started = sorted(str(r["started_at"]) for r in rows if r.get("started_at"))
    if started:
        return started[0][:16].replace("T", " ")
    m = re.match(r"(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})", run_id)
    return f"{m[1]}-{m[2]}-{m[3]} {m[4]}:{m[5]}" if m else time.strftime("%Y-%m-%d %H:%M")


def _default_run_id(rows: list[dict]) -> str:
    ids = sorted({str(r["run_id"]) for r in rows if r.get("run_id")})
    if len(ids) == 1:
        return ids[0]
    if not ids:
        return time.strftime("%Y%m%d-%H%M%S") + "-report"
    import hashlib

    return f"{ids[-1]}-merged-{hashlib.sha1(' '.join(ids).encode()).hexdigest()[:6]}"


def build_report(results: Any, out_root: str | Path = DEFAULT_OUT_ROOT, run_id: str | None = None,
                 params_check: dict | None = None, *, plots: bool = True,
                 curves: list[dict[str, Any]] | None = None) -> Path:
    """Write ``<out_root>/<run-id>/report.md``, ``report.html`` and ``plots/*.png``; update the index.

    ``results``: JSONL paths, directories of them, run ids (looked up in ``results/``), or row dicts.
    ``params_check``: parameter counts per spec (see :func:`reports.sections.params_index` for the accepted shapes); when
    given, the table gets a parameters column with "equal" / "differs". ``plots=False`` skips the PNGs
    (and their sections), for quick rebuilds. ``curves``: training-curve records (``bench curves``); by
    default those stored beside the results (``harness.store.load_curves``) for the rows' runs. Returns the
    run's directory.
    """
    rows = load_rows(results)
    if not rows:
        raise ValueError(f"no rows found in {results!r}")
    if curves is None:
        runs = {r.get("run_id") for r in rows}
        curves = [c for c in load_curves(results) if c.get("run_id") in runs]
    run_id = run_id or _default_run_id(rows)
    out_dir = Path(out_root) / slugify(run_id)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for old in (out_dir / "plots").glob("*.png"):
        old.unlink()

    grouped = group_cells(rows)
    multi_hash = len({(k[0], k[2], getattr(k, "precision", "fp32")) for k in grouped}) < len(grouped)
    pidx = params_index(params_check)
    grids = sweep_grids(rows)
    labels = {str(r.get("impl")) for r in rows} | {str(r.get("row") or r.get("impl")) for r in rows}
    colors = impl_colors(sorted(labels | {str(c["curve"]["impl"]) for c in curves}))
    date = _run_date(rows, run_id)
    doc = Doc(f"vaebench report {run_id}")
    specs = sorted({str(r.get("spec_name", "?")) + (f" k={r['kmer']}" if r.get("kmer") is not None else "")
                    for r in rows})
    impls = sorted({str(r.get("impl")) for r in rows})
    n_ok = sum(row_status(r) == "ok" for r in rows)
    device = device_text(rows)
    commit = str((rows[0].get("fingerprint") or {}).get("git_commit") or "unknown")
    doc.p(f"{date}, {device}, commit `{commit[:7]}`: {len(rows)} row{'s' if len(rows) != 1 else ''} ({n_ok} ok), "
          f"{len(impls)} impl{'s' if len(impls) != 1 else ''}, {len(specs)} spec{'s' if len(specs) != 1 else ''}.")
    title = lambda key: spec_title(key, multi_hash)  # noqa: E731
    targets = {key: st for key, by_batch in grouped.items() if getattr(key, "precision", "fp32") == "fp32"
               and (st := spec_targets(key[0], key[2], by_batch, curves)) is not None}
    headline = section_answer(doc, grouped, rows, title, device, grids, out_dir, colors, plots, curves=curves,
                              targets=targets)
    doc.p("Details: [Recommendation](#recommendation), [Recommended batch](#recommended-batch), "
          "[Results](#results) (with their plots), [Diagnosis](#diagnosis), "
          + ("[Time to target](#time-to-target), " if targets else "")
          + ("[Training curves](#training-curves), " if curves else "")
          + ("[Sweep map](#sweep-map), " if grids else "") + "[Environment](#environment).")
    recs: list[dict] = []
    batch_recs: list[dict] = []
    if grouped:
        recs = section_recommendation(doc, grouped, multi_hash)
        batch_recs = section_batch(doc, grouped, rows, title)
        section_table(doc, grouped, pidx, multi_hash, out_dir, colors, plots)
    else:
        doc.h(2, "Recommendation")
        doc.p("No benchmark cells in this run (only scenario or sweep rows): nothing to recommend.")
    section_diagnosis(doc, rows, grouped, multi_hash)
    section_time_to_target(doc, [(title(key).replace("`", ""), st) for key, st in targets.items()])
    section_curves(doc, curves, out_dir, colors, plots)
    section_sweep(doc, grids, out_dir, plots)
    section_environment(doc, rows)

    (out_dir / "report.md").write_text(doc.markdown())
    (out_dir / "report.html").write_text(doc.html(out_dir))
    meta = {"run_id": run_id, "date": date, "device": device, "commit": commit, "specs": specs, "impls": impls,
            "rows": len(rows), "ok_rows": n_ok, "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "headline": headline, "colors": colors,
            "recommendations": recs, "batch_recommendations": batch_recs,
            "curves": [{"spec": c.get("spec_name"), "kmer": c.get("kmer"), "batch": c.get("batch"),
                        "steps": c.get("steps"), **c.get("verdict", {})} for c in curves]}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    update_index(out_root)
    return out_dir


def update_index(out_root: str | Path = DEFAULT_OUT_ROOT) -> Path:
    """Rewrite ``index.md`` and ``index.html`` in ``out_root`` from every run's ``meta.json``, newest first."""
    root = Path(out_root)
    metas = []
    for f in root.glob("*/meta.json"):
        try:
            metas.append((f.parent.name, json.loads(f.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    metas.sort(key=lambda m: (str(m[1].get("date", "")), m[0]), reverse=True)
    doc = Doc("vaebench reports")
    doc.p(f"{len(metas)} run(s), newest first.")
    rows_md, rows_html = [], []
    for d, m in metas:
        commit = str(m.get("commit") or "")[:7] or "?"
        answer = " ".join(m.get("headline") or []) or "; ".join(
            f"{b.get('spec')}: {b.get('choice')} at batch {b.get('batch')}" for b in m.get("batch_recommendations") or []
            if b.get("choice")) or "—"
        cells = [str(m.get("date", "")), str(m.get("device", "")), f"`{commit}`", answer,
                 f"{m.get('ok_rows', '?')}/{m.get('rows', '?')}"]
        rows_md.append([f"[{m.get('run_id', d)}]({d}/report.md)", *cells])
        rows_html.append([f"[{m.get('run_id', d)}]({d}/report.html)", *cells])
    headers = ["run", "date", "device", "commit", "answer", "ok rows"]
    doc.table(headers, rows_md)
    (root / "index.md").write_text(doc.markdown())
    doc.blocks[-1] = ("table", headers, rows_html, set())
    (root / "index.html").write_text(doc.html(root))
    return root / "index.md"
