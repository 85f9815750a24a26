"""The top of the report, what a reader sees first: one sentence per spec (which framework at which batch,
its samples/s, who is within noise, how much slower the others are), one line each for what broke and why
(int32 verdicts per framework, out of memory, confirmed leaks, then skips and other failures, identical
messages grouped), and the summary figure (one panel per spec that measured a cell, samples/s against batch; the specs
left out named in one line under it) with the sweep's
failure map where a sweep ran.

The verdicts are ``reports.recommend.recommend_batch``'s, ties and exclusions as it decides them; this module
only words them. Every failure message of the run is said here once, in full; the sections below point here.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from harness.impls_registry import impl_rank
from reports.cells import ImplCell
from reports.document import Doc
from reports.formatting import join_and, short, slugify
from reports.messages import group_messages, who
from reports.plots import plot_sweep
from reports.recommend import BatchRecommendation, recommend_batch
from reports.section_batch import sweep_largest
from reports.summary_figure import plot_summary, summary_panels
from reports.time_to_target import no_target_line, target_sentence

__all__ = ["FailureGroup", "failure_groups", "section_answer"]

#: what broke, in the order the lines are written
CATEGORIES = ("int32", "out of memory", "confirmed leak", "skipped", "failed")
MESSAGE_CHARS = 200


def _category(c: ImplCell) -> str | None:
    if c.status == "ok":
        return "confirmed leak" if c.confirmed_leak else None
    pf = next((r.get("preflight") for r in c.rows if isinstance(r.get("preflight"), dict)), {}) or {}
    if c.failure_kind == "int32_overflow" or (c.status == "skipped" and "int32" in " ".join(
            [c.failure_message, str(pf.get("reason") or ""), str(pf.get("verdict") or "")]).lower()
            and str(pf.get("verdict") or "int32 overflow").startswith("int32 overflow")):
        return "int32"
    if c.failure_kind in ("device_oom", "host_oom"):
        return "out of memory"
    return "skipped" if c.status == "skipped" else "failed"


def _message(c: ImplCell) -> str:
    if c.confirmed_leak:
        cause = c.leak_cause or {}
        return (f"{cause.get('cause', 'unknown cause')}: {cause.get('evidence', 'no evidence recorded')}; "
                f"fix: {cause.get('fix', 'no fix recorded')}")
    text = " ".join(c.failure_message.split()) or "no message"
    return f"{c.failure_kind}: {text}" if c.failure_kind in ("device_oom", "host_oom") else text


class FailureGroup:
    """Cells that broke the same way: one category, one kind, one message template."""

    def __init__(self, category: str, kind: str, cells: list[tuple[str, str, int, ImplCell]], message: str,
                 all_impls: dict[tuple[str, int], list[str]]):
        self.category, self.kind, self.cells, self.message = category, kind, cells, message
        self._all = all_impls

    @property
    def where(self) -> str:
        """"all 5 impls at dense, k=7, batch 8" or "torch at dense, k=5, batch 256; flax at conv, k=5, batch 64"."""
        by_where: dict[tuple[str, int], list[str]] = {}
        for label, spec, batch, _ in self.cells:
            by_where.setdefault((spec, batch), []).append(label)
        by_impls: dict[tuple[str, ...], list[tuple[str, int]]] = {}
        for (spec, batch), labels in by_where.items():
            by_impls.setdefault(tuple(labels), []).append((spec, batch))
        parts = []
        for labels, places in by_impls.items():
            everyone = all(set(labels) >= set(self._all.get(p, [])) for p in places)
            n = {len(self._all.get(p, [])) for p in places}
            names = f"all {n.pop()} impls" if everyone and len(n) == 1 and len(labels) > 1 else ", ".join(labels)
            specs: dict[str, list[int]] = {}
            for spec, batch in places:
                specs.setdefault(spec, []).append(batch)
            at = "; ".join(f"{spec}, batch{'es' if len(bs) > 1 else ''} {join_and([f'{b:,}' for b in bs])}"
                           for spec, bs in specs.items())
            parts.append(f"{names} at {at}")
        return "; ".join(parts)


def failure_groups(grouped: dict, title: Callable[[tuple], str]) -> list[FailureGroup]:
    """Every cell that failed, was skipped or leaks (confirmed), grouped by category, kind and message."""
    all_impls = {(title(key), batch): [c.label for c in cells] for key, by_batch in grouped.items()
                 for batch, cells in by_batch.items()}
    items: dict[tuple[str, str], list[tuple[tuple, str]]] = {}
    for key, by_batch in grouped.items():
        for batch, cells in by_batch.items():
            for c in cells:
                cat = _category(c)
                if cat is not None:
                    kind = "leak" if cat == "confirmed leak" else (c.failure_kind or c.status)
                    items.setdefault((cat, kind), []).append(((c.label, title(key), batch, c), _message(c)))
    out = []
    for cat in CATEGORIES:
        for (c2, kind), pairs in items.items():
            if c2 == cat:
                out += [FailureGroup(cat, kind, keys, msg, all_impls) for keys, msg in group_messages(pairs)]
    return out


def _int32_line(grouped: dict, overflowed: bool) -> str | None:
    """The preflight's int32 verdict per framework, impls with the same verdict said once."""
    verdicts: list[tuple[str, str]] = []
    impls: list[str] = []
    for by_batch in grouped.values():
        for cells in by_batch.values():
            for c in cells:
                impls.append(c.label)
                for r in c.rows:
                    v = (r.get("preflight") or {}).get("verdict") if isinstance(r.get("preflight"), dict) else None
                    if v:
                        verdicts.append((c.label, str(v).replace(f"({c.impl})", "").replace(f" in {c.impl}", "")
                                         .strip().rstrip(":;")))
    impls = list(dict.fromkeys(impls))
    if not verdicts:
        return None if overflowed else "**int32**: no overflow in any cell (no preflight verdict stored)."
    by_verdict: dict[str, list[str]] = {}
    for label, v in verdicts:
        by_verdict.setdefault(v, [])
        if label not in by_verdict[v]:
            by_verdict[v].append(label)
    if len(by_verdict) == 1:
        (v, labels), = by_verdict.items()
        return f"**int32**: {v} in any cell ({who(labels, impls)})."
    return "**int32**: " + "; ".join(f"{who(labels, impls)}: {v}" for v, labels in by_verdict.items()) + "."


def _broke_lines(groups: list[FailureGroup], grouped: dict) -> list[str]:
    int32 = _int32_line(grouped, any(g.category == "int32" for g in groups))
    lines = [int32] if int32 else []
    for g in groups:
        head = {"int32": "int32 overflow", "out of memory": "out of memory", "confirmed leak": "leak (confirmed)",
                "skipped": "skipped", "failed": g.kind}[g.category]
        lines.append(f"**{head}**: {g.where}: {short(g.message, MESSAGE_CHARS)}")
    none = [c for c in ("out of memory", "confirmed leak") if not any(g.category == c for g in groups)]
    if none:
        lines.append("No " + " and no ".join({"out of memory": "out-of-memory failure",
                                              "confirmed leak": "confirmed leak"}[c] for c in none) + ".")
    return lines


def _where(device: str) -> str:
    return "on this CPU" if device.startswith("CPU") else f"on {device}"


def _sentence(name: str, device: str, by_batch: dict[int, list[ImplCell]], rec: BatchRecommendation) -> str:
    cells = [(b, c) for b, cs in by_batch.items() for c in cs]
    label = {c.impl: c.label for _, c in cells}
    if rec.choice is None or rec.batch is None or not rec.samples_per_s:
        kinds = {c.status for _, c in cells}
        what = (f"all {len({c.label for _, c in cells})} impls skipped" if kinds == {"skipped"} else
                "every cell failed, was skipped or leaks (confirmed)")
        return f"**{name}** {_where(device)}: no recommendation: {what} (below)."
    text = (f"**{name}** {_where(device)}: use **{label[rec.choice]} at batch {rec.batch:,}** "
            f"({rec.samples_per_s:,.0f} samples/s" + ("; a tie, broken by peak memory" if rec.tie else "") + ")")
    within = [(i, b) for i, b in rec.tie if (i, b) != (rec.choice, rec.batch)]
    if within:
        same = all(b == rec.batch for _, b in within)
        text += "; " + join_and([label[i] if same else f"{label[i]} at batch {b:,}" for i, b in within]) + \
            (" is" if len(within) == 1 else " are") + " within noise"
    tied = {i for i, _ in rec.tie} | {rec.choice}
    best: dict[str, float] = {}
    for b, c in cells:
        if c.eligible and c.median_s and c.impl not in tied:
            best[c.impl] = max(best.get(c.impl, 0.0), b / c.median_s)
    ratios = sorted(((rec.samples_per_s / v, i) for i, v in best.items()), key=lambda t: (t[0], t[1]))
    faster = [(1 / r, i) for r, i in ratios if r < 1]
    slower = [(r, i) for r, i in ratios if r >= 1]
    if faster:
        # the pick came from a tie broken by peak memory; an impl between it and the tie's fastest, whose CI
        # misses the fastest's, trains more samples per second than the pick and must be named so
        names = join_and([f"{label[i]} ({r:.2f}×)" for r, i in sorted(faster, reverse=True)])
        text += (f"; {names} {'is' if len(faster) == 1 else 'are'} faster than that but outside the tie: "
                 f"{'its' if len(faster) == 1 else 'their'} CI lies below the fastest's")
    if slower:
        words = [f"{label[i]} is {r:.2f}× {'slower' if r >= 1 else 'faster'}" if n == 0 else f"{label[i]} {r:.2f}×"
                 for n, (r, i) in enumerate(slower)]
        text += "; " + join_and(words)
        if len(by_batch) > 1:
            text += " at " + ("its" if len(slower) == 1 else "their") + " best batch" + ("" if len(slower) == 1 else "es")
    out = sorted({c.label for _, c in cells if c.impl not in tied and c.impl not in best})
    if out:
        text += f"; not eligible: {', '.join(out)}"
    return text + "."


def _pick(by_batch: dict[int, list[ImplCell]], rec: BatchRecommendation) -> tuple[str, int, float] | None:
    """The samples/s answer as (label, batch, samples/s), or None."""
    if rec.choice is None or rec.batch is None or not rec.samples_per_s:
        return None
    return next(c.label for c in by_batch[rec.batch] if c.impl == rec.choice), rec.batch, rec.samples_per_s


def _panel(name: str, by_batch: dict[int, list[ImplCell]], rec: BatchRecommendation) -> dict[str, Any]:
    lines: dict[str, list[tuple[int, float]]] = {}
    failures: list[tuple[str, int, str]] = []
    for b, cells in by_batch.items():
        for c in cells:
            if c.status == "ok" and c.median_s:
                lines.setdefault(c.label, []).append((b, b / c.median_s))
                if c.confirmed_leak:
                    failures.append((c.label, b, "leak"))
            else:
                failures.append((c.label, b, c.failure_kind or c.status))
    best = None
    if rec.choice is not None and rec.batch is not None and rec.samples_per_s:
        lab = next(c.label for c in by_batch[rec.batch] if c.impl == rec.choice)
        best = (lab, rec.batch, rec.samples_per_s)
    kinds = {f[2] for f in failures}
    note = (f"all {len({f[0] for f in failures})} impls " + ("skipped" if kinds == {"skipped"} else "failed or skipped")
            if failures and not lines else "")
    return {"title": name, "lines": lines, "failures": failures, "best": best, "note": note}


def _precision_sentence(fp32: str, by32: dict[int, list[ImplCell]], rec32: BatchRecommendation, precision: str,
                        by_other: dict[int, list[ImplCell]], rec: BatchRecommendation,
                        curves: list[dict[str, Any]], name: str, kmer: int | None, where: str, heading: str) -> str:
    """One sentence for a spec measured in fp32 and in ``precision`` (bf16): the other precision is recommended
    only where it trains more samples per second and its curve, against the float32 reference, ends where
    float32's does (``harness.diagnose.curves``); its parting step stands beside it. Otherwise the fp32 sentence
    stands, and says what the other precision would have given and why it is not the answer."""
    if rec.choice is None or rec.batch is None or not rec.samples_per_s:
        return fp32 + f" In {precision}: no recommendation (every cell failed, was skipped or leaks; below)."
    label = next(c.label for c in by_other[rec.batch] if c.impl == rec.choice)
    own32 = max((b / c.median_s for b, cs in by32.items() for c in cs if c.impl == rec.choice and c.eligible
                 and c.median_s), default=None)
    gain = f"{rec.samples_per_s / own32:.2f}× its fp32 samples/s" if own32 else "no fp32 row of its own to compare"
    verdict = _curve_verdict(curves, name, kmer, label, precision)
    best32 = rec32.samples_per_s or 0.0
    pick = f"**{label} at batch {rec.batch:,} in {precision}** ({rec.samples_per_s:,.0f} samples/s, {gain}"
    trains = None
    if verdict is not None:
        ends = f"final recon {verdict.get('final_recon') or 0:.2%} from fp32's"
        parted = ("never parted from fp32's curve" if verdict.get("parted_at") is None
                  else f"parted from fp32's curve at step {verdict['parted_at']}")
        trains = (f"trains as fp32 does: {ends}, {parted}" if verdict.get("passed")
                  else f"trains differently: {ends}, {parted}")
    if rec.samples_per_s <= best32:
        return fp32 + (f" In {precision}, the best is {pick}): slower than fp32's best here"
                       + (f"; it {trains}" if trains else "") + ".")
    if verdict is None:
        return (fp32 + f" In {precision}, {pick}) is not recommended: no {precision} training curve in this run shows "
                f"that it trains as fp32 does (python -m bench curves --precision {precision}).")
    if not verdict.get("passed"):
        return fp32 + f" In {precision}, {pick}) is not recommended: it {trains}."
    return (f"**{heading}** {where}: use {pick}; {trains}); {rec.samples_per_s / best32:.2f}× the best fp32 pair's "
            f"samples/s. In fp32: " + fp32.split(": ", 1)[-1])


def _curve_verdict(curves: list[dict[str, Any]], name: str, kmer: int | None, label: str,
                   precision: str) -> dict[str, Any] | None:
    """The stored verdict of ``label``'s curve in ``precision`` for this spec (the matrix's curves run at one batch;
    the steps to where curves end do not depend on the framework's speed), else None."""
    for rec in reversed(curves):
        if (rec.get("spec_name") == name and rec.get("kmer") == kmer and rec.get("precision") == precision
                and rec.get("curve", {}).get("impl") in (f"{label} {precision}", label)):
            return rec.get("verdict")
    return None


def section_answer(doc: Doc, grouped: dict, rows: list[dict[str, Any]], title: Callable[[tuple], str], device: str,
                   grids: dict, out_dir: Path, colors: dict, plots: bool = True,
                   curves: list[dict[str, Any]] | None = None, targets: dict | None = None) -> list[str]:
    """Write the answer, what broke, the summary figure and the failure maps; returns the sentences
    (plain text, for the index). A spec measured in fp32 and bf16 gets one sentence (``_precision_sentence``);
    a spec with a time to target (``targets``: fp32 key -> ``reports.time_to_target.SpecTargets``) gets the fastest
    pair to the target right under it, beside the most samples/s."""
    doc.open("answer", "answer")
    sweeps = sweep_largest(rows)
    sentences, panels = [], []
    recs = {key: recommend_batch(by_batch, sweeps.get((key[0], key[2]))) for key, by_batch in grouped.items()}
    fp32_key = {(k[0], k[2]): k for k in grouped if getattr(k, "precision", "fp32") == "fp32"}
    said: dict[tuple, int] = {}  # an fp32 key -> its sentence, which its other precisions' rows join
    for key, by_batch in grouped.items():
        rec = recs[key]
        name = title(key).replace("`", "")
        precision = getattr(key, "precision", "fp32")
        base = fp32_key.get((key[0], key[2]))
        if precision != "fp32" and base in said:
            at = said[base]
            sentences[at] = _precision_sentence(sentences[at], grouped[base], recs[base], precision, by_batch, rec,
                                                curves or [], key[0], key[2], _where(device), title(base))
        else:
            said[key] = len(sentences)
            sentences.append(_sentence(title(key), device, by_batch, rec))
            if (targets or {}).get(key) is not None:
                sentences.append(target_sentence(targets[key], _pick(by_batch, rec)))
            elif precision == "fp32" and (line := no_target_line(key[0], key[2], curves or [])):
                sentences.append(line)
        panels.append(_panel(name, by_batch, rec))
    if not grouped:
        sentences.append("No benchmark cells in this run (only scenario or sweep rows): nothing to recommend.")
    for s in sentences:
        doc.p(s)
    doc.close()
    groups = failure_groups(grouped, title)
    doc.open("what-broke", "answer")
    doc.ul(_broke_lines(groups, grouped) if grouped else [])
    doc.close()
    if plots and panels:
        drawn, left_out = summary_panels(panels)  # a spec where no cell ran gets no panel, only a name in one line
        if drawn and plot_summary(drawn, colors, out_dir / "plots/summary.png"):
            doc.img("plots/summary.png", "samples/s against batch size (log), one panel per spec that measured a "
                    "cell, one line per impl; failed and skipped cells marked on the axis by kind; the recommended "
                    "point ringed", anchor="summary-figure")
        if left_out:
            doc.p(left_out)
    swatches = " ".join(f'<span class="swatch" style="background:{colors[i]}">{i}</span>'
                        for i in sorted(colors, key=lambda i: (impl_rank(i), i)))
    if swatches:
        doc.raw_html(f'<p class="note" id="colors">Colours: {swatches}</p>', "")
    if plots:
        for spec, grid in grids.items():
            rel = f"plots/sweep_{slugify(spec)}.png"
            if plot_sweep(f"{spec}: outcome per impl and batch", grid, out_dir / rel):
                doc.img(rel, f"failure map for {spec}: outcome of each sweep probe, impl × batch")
    return [_plain(s) for s in sentences]


def _plain(text: str) -> str:
    return text.replace("**", "").replace("`", "")

