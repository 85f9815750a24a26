"""The report's sections, each written into a :class:`reports.document.Doc`: recommendation, results
tables, diagnosis (leaks, failures, scenarios, preflight warnings), sweep map and plots, plus the
parameter-count column's input normalisation. The environment section is ``reports.section_environment``
(re-exported here, where ``reports.build`` imports it from).

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.diagnose.evidence import leak_label
from harness.diagnose.failures import ADVICE
from harness.diagnose.leak import format_bytes
from reports.cells import ImplCell, is_side_row, num, row_status
from reports.document import Doc
from reports.formatting import code, fmt_rate, fmt_time, short, slugify
from reports.messages import group_messages
from reports.plots import plot_memory, plot_rss, plot_step_times
from reports.recommend import recommend_cells
from reports.section_answer import failure_groups
from reports.section_environment import device_text, section_environment

__all__ = [
    "device_text", "params_index", "section_diagnosis", "section_environment",
    "section_recommendation", "section_sweep", "section_table", "sweep_grids",
]


def params_index(params_check: Any) -> dict[str, dict[str, Any]]:
    """Normalise ``params_check`` to {spec: {"expected": (t, nt) | None, "impls": {impl: (t, nt, error)}}}.

    Accepted: {spec: ParamsReport}, {spec: ParamsReport.to_dict()}, {spec: {impl: {"trainable", "non_trainable"}}}
    (optionally with an "expected" entry), or a list of ParamsReport / to_dict() objects carrying their spec.
    """
    if not params_check:
        return {}
    items = params_check.items() if isinstance(params_check, dict) else \
        [(getattr(r, "spec", None) or r.get("spec"), r) for r in params_check]
    out: dict[str, dict[str, Any]] = {}
    for spec, rep in items:
        if hasattr(rep, "to_dict"):
            rep = rep.to_dict()
        expected, impls = None, {}
        if isinstance(rep, dict) and isinstance(rep.get("rows"), list):
            e = rep.get("expected") or {}
            expected = (e.get("trainable"), e.get("non_trainable")) if e else None
            for r in rep["rows"]:
                impls[str(r.get("impl"))] = (r.get("trainable"), r.get("non_trainable"), r.get("error"))
        elif isinstance(rep, dict):
            for k, v in rep.items():
                if k == "expected" and isinstance(v, dict):
                    expected = (v.get("trainable"), v.get("non_trainable"))
                elif isinstance(v, dict):
                    impls[str(k)] = (v.get("trainable"), v.get("non_trainable"), v.get("error"))
        out[str(spec)] = {"expected": expected, "impls": impls}
    return out


def _params_cell(pidx: dict[str, Any], spec: str, cell: ImplCell) -> str:
    entry = pidx.get(spec)
    if not entry:
        return "n/a"
    got = entry["impls"].get(cell.impl) or entry["impls"].get(cell.label)
    if not got:
        return "n/a"
    t, nt, err = got
    if err or t is None:
        return f"failed: {short(err or 'no count', 60)}"
    ref = entry["expected"]
    if ref is None:
        counts = {(v[0], v[1]) for v in entry["impls"].values() if v[0] is not None}
        verdict = "equal" if len(counts) == 1 else "differs"
    else:
        verdict = "equal" if (t, nt) == tuple(ref) else "differs"
    return f"{t:,} / {nt:,} {verdict}"


def spec_title(key: tuple, multi_hash: bool) -> str:
    name, h, k = key
    precision = getattr(key, "precision", "fp32")
    return (f"{name}" + (f", k={k}" if k is not None else "") + (f", {precision}" if precision != "fp32" else "")
            + (f" (`{h}`)" if multi_hash and h else ""))


def section_table(doc: Doc, grouped: dict, pidx: dict, multi_hash: bool, out_dir: Path | None = None,
                  colors: dict | None = None, plots: bool = False) -> None:
    """One table per spec and batch, each followed by its plots: the host memory per batch under its batch's
    table, the step time and peak memory across batches under the spec's last table. A batch where no impl
    ran reads as one line (the reasons are under what broke)."""
    doc.h(2, "Results")
    doc.details("What the columns mean")
    doc.p("One table per spec and batch size, one row per impl, fastest eligible first. Step times are per step; "
          "with several repeats, the median over repeats of each repeat's median (IQR likewise). "
          "\"× best\" is the median step time over the fastest ok impl's (leaking ones included). \"est/meas\" is "
          "the preflight memory estimate over the measured peak. The anon RSS slope is the Theil-Sen slope of "
          "anonymous RSS per batch over the leak phase (untimed, synchronised steps from a fixed ring of host "
          "buffers), with its 95% CI; \"leak\" is the verdict on all the evidence "
          "(that slope, the Python heap, compile counters) against a threshold scaled to the batch; a leak is "
          "\"(confirmed)\" by an untimed confirmation phase, reads what that longer phase found where it refutes it, "
          "and \"(not confirmed)\" where none ran. Where RSS churns, the CI is widened to the series' step noise. "
          "Beside it, what the series "
          "could see: the largest leak it cannot rule out (\"no leak above\", \"could not rule out\"), and "
          "\"catches\", the smallest leak a batch it flags with 80% power on its own noise and length. "
          "\"TFLOP/s\" is the dense and conv FLOPs of one "
          "training step (2 per multiply-add, backward twice the forward) over the median step time; \"MFU\" is that "
          "rate over the float32 matmul peak measured on the same device: the fastest installed framework's own square "
          "product, named under Environment. \"median step\" feeds "
          "batches from host memory the way the framework's users do, each staged one step ahead; \"device step\" "
          "times the same loop on batches already on the device (the framework's compute alone), and \"step / device\" "
          "above 1 says the cell is input-bound. On a CPU the two coincide, and are not timed twice. A compile marked "
          "(cached) loaded its executable from the run's compilation cache. A failed or skipped row shows its kind; "
          "its message is under [what broke](#what-broke), said once for every impl it names.")
    doc.close()
    any_standin = False
    colors = colors or {}
    every = [c for by_batch in grouped.values() for cells in by_batch.values() for c in cells]
    # energy has a column only where some cell measured it (NVML, RAPL); else one line says why not
    energy = any(c.joules_per_step is not None for c in every)
    absent = sorted({c.energy_absent for c in every if c.status == "ok" and c.joules_per_step is None
                     and c.energy_absent})
    if absent:
        doc.p("Energy (joules per step, `harness.measure.energy`): " + ("not measured for some cells: " if energy
              else "not measured in this run: ") + "; ".join(absent) + ".")
    for key, by_batch in grouped.items():
        title = spec_title(key, multi_hash).replace("`", "")
        # a fixed-length spec (masked-multiomics) has no k: its files are named by spec and hash alone
        slug = slugify("_".join([key[0], *([f"k{key[2]}"] if key[2] is not None else []), key[1][:6]]))
        for batch, cells in by_batch.items():
            doc.h(3, f"{spec_title(key, multi_hash)}, batch {batch}")
            if all(c.status != "ok" for c in cells) and len(cells) > 1:
                kinds = sorted({c.failure_kind or c.status for c in cells})
                est = [f"{c.label} {format_bytes(c.preflight_estimate)}" for c in cells
                       if c.preflight_estimate is not None]
                doc.p(f"No impl ran: all {len(cells)} impls {' or '.join(kinds)} (see [what broke](#what-broke))."
                      + (f" Preflight memory estimates: {', '.join(est)}." if est else ""))
                continue
            ok_medians = [c.median_s for c in cells if c.status == "ok" and c.median_s]
            best = min(ok_medians) if ok_medians else None
            headers = ["impl"] + (["params (trainable / non-trainable)"] if pidx else []) + [
                "compile", "median step (IQR)", "device step", "step / device", "samples/s", "× best", "TFLOP/s", "MFU",
                *(["J/step", "samples/J"] if energy else []), "peak memory", "est/meas",
                "anon RSS slope (95% CI)", "leak", "failure"]
            rows = []
            for c in cells:
                any_standin |= c.cpu_standin
                mem = "—"
                if c.peak_bytes is not None:
                    mem = format_bytes(c.peak_bytes) + (" (peak RSS*)" if c.cpu_standin else "")
                est = "—"
                if c.preflight_estimate is not None and c.peak_bytes:
                    est = f"{c.preflight_estimate / c.peak_bytes:.2f}"
                elif c.preflight_estimate is not None:
                    est = f"est {format_bytes(c.preflight_estimate)}"
                step = "—"
                if c.median_s is not None:
                    step = fmt_time(c.median_s)
                    if c.q1_s is not None and c.q3_s is not None:
                        step += f" ({fmt_time(c.q1_s)}–{fmt_time(c.q3_s)})"
                slope = "—" if c.slope is None else (
                    f"{fmt_rate(c.slope)} ({format_bytes(c.slope_ci_low)} to {format_bytes(c.slope_ci_high)})")
                failure = "" if c.status == "ok" else f"**{c.failure_kind}**"
                name = f"**{c.label}**" if c.label != c.impl else c.impl
                if c.train_loop and c.train_loop != "step":
                    name += f" ({c.train_loop})"
                compile_text = "—" if c.compile_s is None else f"{c.compile_s:.2f} s" + (
                    " (cached)" if c.compile_cached else "")
                device, ratio = "—", "—"
                if c.device_median_s is not None and c.median_s is not None:
                    device = fmt_time(c.device_median_s) if c.device_step_timed else "= step"
                    ratio = f"{c.median_s / c.device_median_s:.2f}" if c.device_step_timed else "—"
                rows.append([name]
                            + ([_params_cell(pidx, key[0], c)] if pidx else [])
                            + [compile_text, step, device, ratio,
                               "—" if c.samples_per_s is None else f"{c.samples_per_s:,.0f}",
                               "—" if (best is None or c.median_s is None) else f"{c.median_s / best:.2f}",
                               "—" if c.tflops is None else f"{c.tflops:.3g}",
                               "—" if c.mfu is None else f"{c.mfu:.1%}",
                               *([_joules(c.joules_per_step), _joules(c.samples_per_joule)] if energy else []),
                               mem, est, slope, leak_cell(c), failure or "—"])
            n = len(headers)
            off = 1 if pidx else 0
            doc.table(headers, rows, right={i + off for i in range(1, 11 + 2 * energy)} & set(range(n)))
            reps = max(c.n_repeats for c in cells)
            if reps > 1:
                doc.note(f"{reps} repeats per impl; memory is the largest peak, leak the worst verdict of any repeat.")
            rel = f"plots/rss_{slug}_b{batch}.png"
            if plots and out_dir is not None and plot_rss(f"{title}, batch {batch}: host RSS per batch", cells, colors,
                                                          out_dir / rel):
                doc.img(rel, f"anonymous RSS (solid) and file RSS (dashed) per batch, {title}, batch {batch}")
        if not (plots and out_dir is not None):
            continue
        rel = f"plots/step_time_{slug}.png"
        if plot_step_times(f"{title}: step time", by_batch, colors, out_dir / rel):
            doc.img(rel, f"median step time per impl and batch for {title}, error bars IQR")
        rel = f"plots/memory_{slug}.png"
        if plot_memory(f"{title}: peak memory", by_batch, colors, out_dir / rel):
            standin = any(c.cpu_standin for cells in by_batch.values() for c in cells)
            doc.img(rel, f"peak memory per impl and batch for {title}"
                    + (" (hatched: peak RSS as CPU stand-in)" if standin else ""))
    if any_standin:
        doc.note("* peak RSS: on CPU there is no device allocator, so the worker's peak resident set (VmHWM) during "
                 "a few training steps on a trimmed heap, after the timing, stands in for device memory, less the "
                 "framework's import footprint and file-backed pages (shared libraries, memmap). It is not comparable "
                 "with GPU figures.")


def sweep_grids(rows: list[dict]) -> dict[str, dict[tuple[str, int], str]]:
    grids: dict[str, dict[tuple[str, int], str]] = {}
    for r in rows:
        sw = r.get("sweep")
        if not isinstance(sw, dict):
            continue
        impl = str(sw.get("impl") or r.get("impl"))
        batch = sw.get("probe_batch", r.get("batch"))
        outcome = sw.get("outcome") or ("ok" if row_status(r) == "ok" else r.get("failure_kind") or "error")
        if batch is None:
            continue
        spec = str(r.get("spec_name", "?")) + (f", k={r['kmer']}" if r.get("kmer") is not None else "")
        grids.setdefault(spec, {})[(impl, int(batch))] = str(outcome)
    return grids


def section_sweep(doc: Doc, grids: dict[str, dict[tuple[str, int], str]], out_dir: Path, plots: bool = True) -> None:
    """The sweep map, from :func:`sweep_grids`; nothing when the run has no sweep rows."""
    if not grids:
        return
    doc.h(2, "Sweep map")
    doc.p("Batch-size probes: each cell is one probe of one impl at one batch size"
          + (" (the failure map at the top draws them, coloured by outcome)." if plots else "."))
    for spec, grid in grids.items():
        doc.h(3, f"Sweep: {spec}")
        impls = sorted({k[0] for k in grid})
        batches = sorted({k[1] for k in grid})
        doc.table(["impl"] + [str(b) for b in batches] + ["largest ok", "first failure"],
                  [[i] + [grid.get((i, b), "") for b in batches] + _sweep_summary(grid, i) for i in impls])


def _sweep_summary(grid: dict, impl: str) -> list[str]:
    probes = sorted((b, o) for (i, b), o in grid.items() if i == impl)
    ok = [b for b, o in probes if o == "ok"]
    fail = [(b, o) for b, o in probes if o != "ok"]
    return [str(max(ok)) if ok else "none", f"{fail[0][0]} ({fail[0][1]})" if fail else "none"]


def section_recommendation(doc: Doc, grouped: dict, multi_hash: bool) -> list[dict]:
    """The verdict per (spec, batch), judged on the cells ``grouped`` already holds; returns them for meta.json."""
    doc.h(2, "Recommendation")
    doc.p("Rule: never a row that failed, was skipped or whose leak was confirmed (an unconfirmed leak is a "
          "warning); among the rest the fastest median step time wins, "
          "unless its 95% CI of the mean overlaps another's: then it is a tie, broken by the lowest peak memory.")
    out, notes = [], []
    for key, by_batch in grouped.items():
        for batch, cells in by_batch.items():
            rec = recommend_cells(cells)
            out.append({"spec": key[0], "spec_hash": key[1], "kmer": key[2], "batch": batch,
                        "choice": rec.choice, "tie": rec.tie, "reason": rec.reason, "core": rec.core or rec.reason,
                        "label": f"{spec_title(key, multi_hash)}, batch {batch}"})
            notes.append(_cell_notes(cells, rec))
    doc.table(["cell", "use"], [[o["label"], "**no recommendation**" if o["choice"] is None else
                                 f"**{o['choice']}**" + (f" (tie: {', '.join(o['tie'])})" if o["tie"] else "")]
                                for o in out])
    for o, note in zip(out, notes, strict=True):
        doc.h(3, o["label"])
        head = ("**No recommendation.** " if o["choice"] is None
                else f"**Use {o['choice']}**" + (" (a tie). " if o["tie"] else ". "))
        doc.p(head + (note if o["choice"] is None else o.pop("core") + note))
    for o in out:
        o.pop("core", None)
    return out


def _cell_notes(cells: list[ImplCell], rec) -> str:
    """What the recommendation's reason says of the other impls, in a few words: the messages are said once,
    under what broke (failures) and in the diagnosis (leak verdicts)."""
    notes = []
    excluded = [c for c in cells if not c.eligible]
    if excluded:
        kinds: dict[str, list[str]] = {}
        for c in excluded:
            kinds.setdefault("confirmed leak" if c.confirmed_leak else (c.failure_kind or c.status), []).append(c.label)
        if rec.choice is None and len(kinds) == 1 and len(excluded) == len(cells) > 1:
            (kind, _), = kinds.items()
            return f"All {len(cells)} impls {kind} (see [what broke](#what-broke))."
        notes.append("Not eligible: " + "; ".join(f"{', '.join(v)} ({k})" for k, v in kinds.items())
                     + " (see [what broke](#what-broke)).")
    best = next((c for c in cells if c.impl == rec.choice), None)
    faster = [c for c in cells if c.status == "ok" and c.confirmed_leak and best is not None and c.median_s is not None
              and best.median_s is not None and c.median_s < best.median_s]
    if faster:
        notes.append(", ".join(f"**{c.label}**" for c in faster) + " had a faster median but leaks (confirmed).")
    unconfirmed = [c.label for c in cells if c.eligible and c.unconfirmed_leak]
    if unconfirmed:
        notes.append(f"Warning: leak not confirmed for {', '.join(unconfirmed)}, so it stays eligible "
                     "(see [Diagnosis](#diagnosis)).")
    inconclusive = [c.label for c in cells if c.eligible and c.leak_verdict == "inconclusive"]
    if inconclusive:
        notes.append(f"Leak verdict inconclusive for {', '.join(inconclusive)} (see [Diagnosis](#diagnosis)).")
    return (" " + " ".join(notes)) if notes else ""


def section_diagnosis(doc: Doc, rows: list[dict], grouped: dict, multi_hash: bool) -> None:
    """Leaks, failures, scenarios and preflight warnings. Identical messages are said once: the failures'
    messages under what broke (``reports.section_answer``), here the advice per kind and the stderr tails
    (collapsed); leak verdicts that share their wording are one line naming every cell."""
    doc.h(2, "Diagnosis")
    title = lambda key: spec_title(key, multi_hash)  # noqa: E731
    leaks = [(f"{c.label} at {title(k)}, batch {b}", c) for k, bb in grouped.items() for b, cs in bb.items()
             for c in cs if c.confirmed_leak]
    doc.h(3, "Leaks")
    if leaks:
        for where, c in leaks:
            doc.p(f"**{where}**: leak (confirmed, on {', '.join(c.leak_evidence) or 'rss'}); anonymous RSS grows "
                  f"{fmt_rate(c.slope)} in the leak phase (95% CI {fmt_rate(c.slope_ci_low)} to "
                  f"{fmt_rate(c.slope_ci_high)}). {c.leak_reason} Cause and fix under [what broke](#what-broke).")
    else:
        doc.p("No confirmed leak in the benchmark cells.")
    unconfirmed = [(f"{c.label} at {title(k)}, batch {b}", c) for k, bb in grouped.items()
                   for b, cs in bb.items() for c in cs if c.status == "ok" and c.unconfirmed_leak]
    if unconfirmed:
        doc.p("Warning, leak not confirmed (the leak phase read a leak and no confirmation ran: it was off, "
              "its budget was spent, or the row predates confirmations; such a row stays eligible):")
        doc.ul([f"{w}: {fmt_rate(c.slope)} in the leak phase. {c.leak_reason or 'no reason given'}"
                for w, c in unconfirmed])
    inconclusive = [((c.label, title(k), b), c.leak_reason or "no reason given") for k, bb in grouped.items()
                    for b, cs in bb.items() for c in cs if c.leak_verdict == "inconclusive"]
    if inconclusive:
        doc.p("Inconclusive leak verdicts (allowed in a recommendation, but check them), cells with the same "
              "first finding together:")
        heads = group_messages([(key, reason.split(";")[0]) for key, reason in inconclusive])
        rest = {key: reason.split(";", 1)[1].strip() if ";" in reason else "" for key, reason in inconclusive}
        doc.ul([f"{_cells_text(keys)}: {msg}." for keys, msg in heads])
        if any(rest.values()):
            doc.details("The rest of each inconclusive verdict")
            doc.ul([f"{label} at {where}, batch {b}: {rest[(label, where, b)]}"
                    for keys, _ in heads for label, where, b in keys if rest[(label, where, b)]])
            doc.close()

    doc.h(3, "Failures")
    groups = failure_groups(grouped, title)
    failures = [g for g in groups if g.category != "confirmed leak"]
    if failures:
        doc.p("Each failure's message is under [what broke](#what-broke), once for every cell it names; here "
              "the advice per kind.")
        by_kind: dict[str, list] = {}
        for g in failures:
            by_kind.setdefault(g.kind, []).append(g)
        doc.ul([f"**{kind}** ({'; '.join(g.where for g in gs)}): {ADVICE.get(kind, ADVICE['error'])}"
                for kind, gs in by_kind.items()])
        tails = []
        for g in failures:
            for label, where, b, c in g.cells:
                tail = next((r.get("stderr_tail") for r in c.rows if r.get("stderr_tail")), None)
                if tail and " ".join(str(tail[-1]).split()) not in " ".join(c.failure_message.split()):
                    tails.append(((label, where, b), " / ".join(short(t, 300) for t in tail[-3:])))
        if tails:
            doc.details("stderr tails (the last lines each worker wrote)")
            doc.ul([f"{_cells_text(keys)}: {code(msg)}" for keys, msg in group_messages(tails)])
            doc.close()
    else:
        doc.p("No benchmark cell failed.")

    scen = [r for r in rows if r.get("scenario") and not r.get("sweep")]
    if scen:
        doc.h(3, "Leak scenarios")
        doc.p("Named leak anti-patterns run on purpose; each row shows what the detector concluded.")
        table = []
        for r in scen:
            leak = r.get("leak") or {}
            cause = leak.get("cause") or {}
            if row_status(r) == "ok":
                verdict = leak_label(leak)
                detail = f"{cause.get('cause', '')}: {cause.get('fix', '')}".strip(": ")
            else:
                verdict = f"failed ({r.get('failure_kind')})"
                detail = code(short(r.get("failure_message", ""), 160))
            table.append([str(r.get("impl")), str(r.get("scenario")), str(r.get("batch")), verdict,
                          fmt_rate(num(leak.get("slope_bytes_per_batch"))), detail or "—"])
        doc.table(["impl", "scenario", "batch", "verdict", "slope", "cause and fix"], table, right={2, 4})

    doc.h(3, "Preflight warnings")
    seen, flags = set(), []
    for r in rows:
        pf = r.get("preflight")
        if not isinstance(pf, dict):
            continue
        for f in pf.get("flags") or []:
            if not isinstance(f, dict):
                continue
            k = json.dumps([r.get("impl"), r.get("spec_name"), r.get("batch"), f], sort_keys=True, default=str)
            if k in seen:
                continue
            seen.add(k)
            flags.append([str(r.get("impl")), str(r.get("spec_name")), str(r.get("batch")),
                          str(f.get("layer") or f.get("tensor") or "?"),
                          f"{f['elements']:,}" if isinstance(f.get("elements"), int) else str(f.get("elements", "?")),
                          str(f.get("safe_batch", "?")), "yes" if f.get("wrapped") else "no",
                          short(str(f.get("message") or f.get("reason") or ""), 120) or "—"])
    skipped = [r for r in rows if row_status(r) == "skipped" and isinstance(r.get("preflight"), dict)
               and not is_side_row(r)]
    if flags:
        doc.table(["impl", "spec", "batch", "layer / tensor", "elements", "safe batch", "wrapped", "note"], flags,
                  right={2, 4, 5})
    if skipped:
        doc.p(f"Preflight skipped {len(skipped)} cell{'s' if len(skipped) != 1 else ''}; the reasons are under "
              "[what broke](#what-broke).")
    if not flags and not skipped:
        doc.p("No preflight warnings.")


def _cells_text(keys: list[tuple[str, str, int]]) -> str:
    """(label, spec, batch) keys as "torch, flax at dense, k=5, batch 64; keras-jax at conv, k=5, batch 8"."""
    by: dict[tuple[str, int], list[str]] = {}
    for label, where, b in keys:
        by.setdefault((where, b), []).append(label)
    return "; ".join(f"{', '.join(labels)} at {where}, batch {b}" for (where, b), labels in by.items())


def _joules(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def leak_cell(c: ImplCell) -> str:
    """The results table's "leak" cell: the verdict with what its series could see ("no leak above 3.4 KiB/batch,
    catches 131.4 KiB/batch"); a row from before the leak phase shows its label alone."""
    if not c.leak_label:
        return "—"
    power = c.leak_power
    if c.leak_verdict == "leak":
        text = c.leak_label + (f", {power}" if power else "")
    elif power and c.leak_verdict in ("no leak", "inconclusive") and not power.startswith("too short"):
        text = power if c.leak_verdict == "no leak" else f"inconclusive: {power}"
    else:
        text = c.leak_label + (f" ({power})" if power else "")
    if c.leak_detectable is not None and c.leak_verdict != "leak":
        text += f", catches {format_bytes(c.leak_detectable)}/batch"
    return text
