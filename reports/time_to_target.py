"""Time to a target per (impl, batch), read from the run's cells and its curves (``harness.diagnose.target``).

``compile + (steps - 1) x mean step``: the steps come from the curves, the times from the cells. The reference's
steps at a batch stand for another impl's only where that impl's curve agreed with the reference's
(``harness.diagnose.curves``); the verdict is read at the same batch where the impl has a curve there, else at the
batch where it has one, which the table names. An impl whose curve parted trains on another path: its steps
come from its own curve at that batch, and where it has none it gets no time ("trains differently"), never the
reference's steps.

The report says the fastest pair to the target beside the fastest in samples/s (``section_answer``) and lists every
pair in its "Time to target" section (``section_time_to_target``).

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.diagnose.target import StepsToTarget, Target, TimeToTarget, time_to_target
from reports.cells import ImplCell
from reports.document import Doc
from reports.formatting import join_and


@dataclass
class TargetCell:
    """One impl at one batch: its steps to target, where they came from, and its time to target."""

    label: str
    batch: int
    steps: StepsToTarget | None
    #: "reference" (the reference's own curve), "agrees" (the reference's steps; the impl's curve agreed),
    #: "own curve" (it trains differently; its own steps), or "" with ``note`` saying why there is no time
    basis: str
    time: TimeToTarget | None = None
    compile_s: float | None = None
    mean_s: float | None = None
    samples_per_s: float | None = None
    compile_cached: bool | None = None
    note: str = ""


@dataclass
class SpecTargets:
    target: Target
    reference: str
    cells: list[TargetCell] = field(default_factory=list)
    #: the reference's steps to target per batch
    steps: dict[int, StepsToTarget] = field(default_factory=dict)

    @property
    def timed(self) -> list[TargetCell]:
        return [c for c in self.cells if c.time is not None]

    @property
    def best(self) -> TargetCell | None:
        return min(self.timed, key=lambda c: c.time.seconds, default=None)


def _latest(records: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:  # stored in order: a later record of the same curve replaces an earlier one
        out[(str((r.get("curve") or {}).get("impl")), int(r.get("batch") or 0))] = r
    return out


def _steps(rec: dict[str, Any] | None) -> StepsToTarget | None:
    got = (rec or {}).get("steps_to_target")
    if not got:
        return None
    return StepsToTarget(got.get("steps"), int(rec["batch"]), int(got.get("budget_steps") or rec.get("steps") or 0))


def spec_targets(name: str, kmer: int | None, by_batch: dict[int, list[ImplCell]],
                 curves: list[dict[str, Any]]) -> SpecTargets | None:
    """Every ok cell of one fp32 spec with its time to target; None when the run has no target for the spec."""
    recs = [r for r in curves if r.get("spec_name") == name and r.get("kmer") == kmer
            and r.get("precision", "fp32") == "fp32" and r.get("target")]
    if not recs:
        return None
    target = Target.from_dict(recs[-1]["target"])
    reference = str(recs[-1]["verdict"].get("reference") or target.impl or "?")
    latest = _latest(recs)
    out = SpecTargets(target, reference)
    out.steps = {b: s for (label, b), r in latest.items() if label == reference and (s := _steps(r)) is not None}
    for batch in sorted(by_batch):
        for c in by_batch[batch]:
            if c.eligible:
                out.cells.append(_cell(c, batch, reference, latest, out.steps))
    return out


def _cell(c: ImplCell, batch: int, reference: str, latest: dict, ref_steps: dict[int, StepsToTarget]) -> TargetCell:
    own = latest.get((c.label, batch))
    judged = own or next((r for (label, _), r in sorted(latest.items(), key=lambda kv: kv[0][1])
                          if label == c.label), None)
    cell = TargetCell(c.label, batch, None, "", compile_s=c.compile_s, mean_s=c.mean_s,
                      samples_per_s=c.samples_per_s, compile_cached=c.compile_cached)
    if c.label == reference:
        cell.steps, cell.basis = ref_steps.get(batch), "reference"
        if cell.steps is None:
            cell.note = f"no curve of {reference} at batch {batch:,}"
    elif judged is None:
        cell.note = "no curve: whether it trains as the reference does was not measured"
    elif judged["verdict"].get("passed"):
        cell.steps, cell.basis = ref_steps.get(batch), "agrees"
        where = "" if judged is own else f" at batch {judged['batch']:,}"
        cell.note = f"{reference}'s steps: its curve agrees with {reference}'s{where}"
        if cell.steps is None:
            cell.note = f"no curve of {reference} at batch {batch:,}"
    else:
        parted = judged["verdict"].get("parted_at")
        why = (f"trains differently (its curve at batch {judged['batch']:,} "
               + ("failed" if judged["verdict"].get("error") else
                  f"parted from {reference}'s at step {parted}" if parted is not None else "ends elsewhere") + ")")
        if own is not None and _steps(own) is not None:
            cell.steps, cell.basis, cell.note = _steps(own), "own curve", f"{why}; steps from its own curve"
        else:
            cell.note = f"{why}; no curve of its own at batch {batch:,}, so no time"
    if cell.steps is not None and cell.steps.reached and c.compile_s is not None and c.mean_s is not None:
        cell.time = time_to_target(cell.steps.steps, c.compile_s, c.mean_s, c.ci_low_s, c.ci_high_s)
    elif cell.steps is not None and not cell.steps.reached:
        cell.note = (cell.note + "; " if cell.note else "") + cell.steps.describe()
    return cell


def no_target_line(name: str, kmer: int | None, curves: list[dict[str, Any]]) -> str | None:
    """Why a spec with curves has no time to target (its reference's curve gave no target), or None."""
    why = next((r["why_no_target"] for r in reversed(curves) if r.get("spec_name") == name and r.get("kmer") == kmer
                and r.get("why_no_target")), None)
    return f"No time to target: {why}." if why else None


def _s(x: float) -> str:
    """Seconds to three figures at most (1.13, 41.2, 1,234): a CI of a second-long run still shows its width."""
    return f"{x:,.2f}" if abs(x) < 10 else f"{x:,.1f}" if abs(x) < 100 else f"{x:,.0f}"


def _secs(t: TimeToTarget) -> str:
    return f"{_s(t.seconds)} s" + (f", 95% CI {_s(t.ci_low)}-{_s(t.ci_high)}" if t.has_ci else "")


def target_sentence(st: SpecTargets, pick: tuple[str, int, float] | None) -> str:
    """"Fastest to the target (...): torch at batch 64 (12.3 s ...); batch 512 gives 1.3x the samples/s but needs
    1.8x the samples". ``pick``: the samples/s answer's (label, batch, samples/s), or None."""
    best = st.best
    head = f"Fastest to the target ({st.target.describe()})"
    if best is None:
        why = {c.note for c in st.cells if c.note} or {"no cell with both a time and a curve"}
        return f"{head}: no pair has a time to target: {'; '.join(sorted(why))}."
    text = (f"{head}: **{best.label} at batch {best.batch:,}** ({_secs(best.time)}: {best.steps.steps:,} steps, "
            f"{best.steps.samples:,} samples)")
    if pick is not None and (pick[0], pick[1]) != (best.label, best.batch):
        label, batch, sps = pick
        other = st.steps.get(batch)
        gain = f"{sps / best.samples_per_s:.2f}× the samples/s" if best.samples_per_s else "more samples/s"
        who = f"{label} at batch {batch:,}" if label != best.label else f"batch {batch:,}"
        if other is None:
            text += f"; {who} gives {gain}, but no curve at batch {batch:,} says how many samples it needs"
        elif not other.reached:
            text += f"; {who} gives {gain} but did not reach the target within {other.budget_steps:,} steps"
        elif not best.steps.samples or not other.samples:  # a --target-recon the weights meet before training
            text += f"; {who} gives {gain}"
        else:
            text += (f"; {who} gives {gain} but needs {other.samples / best.steps.samples:.2f}× the samples"
                     + (f" ({_secs(t.time)})" if (t := next((c for c in st.timed if (c.label, c.batch) == (label, batch)),
                                                         None)) else ""))
    elif pick is not None:
        text += "; the same pair as the most samples/s"
    apart = sorted({c.label for c in st.cells if c.basis == "own curve" or "trains differently" in c.note})
    if apart:
        text += f"; {join_and(apart)} {'trains' if len(apart) == 1 else 'train'} differently (below)"
    return text + "."


def section_time_to_target(doc: Doc, targets: list[tuple[str, SpecTargets]]) -> None:
    """The table of every pair; nothing when no spec has a target."""
    if not targets:
        return
    doc.h(2, "Time to target")
    doc.p("Time to target = compile + (steps to target − 1) × mean step: the first step is the cell's compile "
          "time (timed alone), each later step counts at the cell's mean step time, and the 95% CI is the mean's "
          "(Student's t over its timed windows). The steps to target come from the reference's curve at each batch "
          "(the first probe whose held-out reconstruction meets the target); they stand for another impl only where "
          "its own curve agrees with the reference's, and an impl that trains differently gets its own curve's steps "
          "or no time. The shortcut is checked against runs timed end to end by python -m bench target-check "
          "(docs/time-to-target.md).")
    for title, st in targets:
        doc.h(3, f"Time to target: {title}")
        doc.p(f"Target: {st.target.describe()}. Steps to target of {st.reference}: "
              + "; ".join(f"batch {b:,}: {s.describe()}" for b, s in sorted(st.steps.items())) + ".")
        rows = []
        for c in sorted(st.cells, key=lambda c: (c.time is None, c.time.seconds if c.time else 0, c.label)):
            rows.append([c.label, f"{c.batch:,}", "-" if c.steps is None or not c.steps.reached else f"{c.steps.steps:,}",
                         "-" if c.steps is None or not c.steps.reached else f"{c.steps.samples:,}",
                         "-" if c.compile_s is None else f"{c.compile_s:.2f}" + (" (cached)" if c.compile_cached else ""),
                         "-" if c.mean_s is None else f"{c.mean_s * 1e3:.2f}",
                         "-" if c.time is None else _secs(c.time), c.note or "reference's own curve"])
        doc.table(["impl", "batch", "steps", "samples", "compile (s)", "mean step (ms)", "time to target", "basis"],
                  rows, right={1, 2, 3, 4, 5})


__all__ = ["SpecTargets", "TargetCell", "no_target_line", "section_time_to_target", "spec_targets",
           "target_sentence"]
