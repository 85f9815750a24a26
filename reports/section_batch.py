"""The report's "Recommended batch" section: which (framework, batch) to train each spec with, and the
largest batch each framework trained. The rule is ``reports.recommend.recommend_batch``; this module
only gathers its inputs from the grouped cells and the sweep rows, and writes the section."""

from __future__ import annotations

from typing import Any

from reports.cells import row_status
from reports.document import Doc
from reports.recommend import recommend_batch


def sweep_largest(rows: list[dict[str, Any]]) -> dict[tuple[str, Any], dict[str, int]]:
    """{(spec name, kmer): {impl: largest batch a sweep probe trained}} from the sweep rows."""
    out: dict[tuple[str, Any], dict[str, int]] = {}
    for r in rows:
        sw = r.get("sweep")
        if not isinstance(sw, dict) or (sw.get("outcome") or row_status(r)) != "ok":
            continue
        batch = sw.get("probe_batch", r.get("batch"))
        if batch is None:
            continue
        by_impl = out.setdefault((str(r.get("spec_name", "?")), r.get("kmer")), {})
        impl = str(sw.get("impl") or r.get("impl"))
        by_impl[impl] = max(by_impl.get(impl, 0), int(batch))
    return out


def section_batch(doc: Doc, grouped: dict, rows: list[dict[str, Any]], title) -> list[dict[str, Any]]:
    """One line per spec: the (impl, batch) with the most samples per second, and each impl's largest batch.
    ``title(key)`` names a spec as the other sections do. Returns the verdicts for meta.json."""
    doc.h(2, "Recommended batch")
    doc.p("Per spec, over every batch measured: never a cell that failed, was skipped or leaks (confirmed); among the "
          "rest the most samples per second wins, unless its 95% CI overlaps another pair's: then it is a tie, "
          "broken by the lowest peak memory. The largest batch each framework trained counts the sweep's probes too.")
    sweeps = sweep_largest(rows)
    out, table = [], []
    for key, by_batch in grouped.items():
        rec = recommend_batch(by_batch, sweeps.get((key[0], key[2])))
        use = ("**none**" if rec.choice is None else f"**{rec.choice} at batch {rec.batch}**"
               + (f" ({rec.samples_per_s:,.0f} samples/s)" if rec.samples_per_s else "")
               + (" (a tie)" if rec.tie else ""))
        largest = ", ".join(f"{impl} {batch:,}" for impl, batch in sorted(rec.largest.items())) or "none"
        table.append([title(key), use, largest])
        out.append({"spec": key[0], "spec_hash": key[1], "kmer": key[2], "choice": rec.choice, "batch": rec.batch,
                    "samples_per_s": rec.samples_per_s, "tie": rec.tie, "largest": rec.largest, "reason": rec.reason})
    doc.table(["spec", "use", "largest batch trained"], table)
    for (key, _), o in zip(grouped.items(), out, strict=True):
        if o["choice"] is not None:  # a spec with nothing eligible: its reasons are under what broke, once
            doc.p(f"{title(key)}: {o['reason']}")
    return out
