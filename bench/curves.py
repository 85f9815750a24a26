"""``python -m bench curves``: do the frameworks train the same over hundreds of steps?

The training is in ``harness.run.curves`` (shared weights, batches and noise; one worker per impl), the
verdicts in ``harness.diagnose.curves`` (tolerances and the KL-collapse flag, documented there). This
module checks the flags, stores one record per impl under ``<results>/curves/<run-id>.jsonl`` (where
the report finds them) and prints the verdicts. Exit 1 when an impl's curve parts from the reference's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

from bench.parser import UsageError, checked_impls

#: what ``nox -s bench`` runs after its matrix: a short curve of the dense preset. On a CPU, 100 steps:
#: 200 took 231-302 s of a fresh clone's 14-17 minutes at k=7 on 2 cores (six workers, 26-51 s each).
#: In that run (the CPU reference at 36f3ef2, reports/reference/cpu) the training loss of every build fell from 5933 to a
#: mean of 4318-4319 over steps 90-99 and 4306 over steps 190-199: the first 100 steps hold the descent
MATRIX_CURVES = {"spec": "dense", "steps": 200, "cpu_steps": 100, "every": 10}


def curve_records(spec, kmer: int | None, batch: int, steps: int, every: int, curves: list, verdicts: list,
                  data: str | None, target=None, why_no_target: str | None = None) -> list[dict[str, Any]]:
    """One stored record per impl: the curve, its verdict, the tolerances it was judged by, and with the run's
    ``target`` (``harness.diagnose.target``) the steps the curve took to reach it."""
    from harness.diagnose import curves as rules
    from harness.diagnose.target import steps_to_target

    tol = verdicts[0] if verdicts else None
    tolerances = {"part": tol.tol_part if tol else rules.TOL_PART,
                  "final_recon": tol.tol_final if tol else rules.TOL_FINAL_RECON,
                  "source": tol.tol_source if tol else "fixed", "floor_factor": rules.FLOOR_FACTOR,
                  "smooth_steps": rules.SMOOTH_STEPS, "final_fraction": rules.FINAL_FRACTION,
                  "kl_collapse_nats": rules.KL_COLLAPSE_NATS, "collapse_after": rules.COLLAPSE_AFTER}
    tolerances["final_recon_other_precision"] = rules.TOL_FINAL_PRECISION
    now = time.strftime("%Y-%m-%dT%H:%M:%S")

    def own(c):  # the spec the curve trained (a bf16 curve's hash is its bf16 spec's)
        p = getattr(c, "precision", "fp32")
        return spec if p == spec.settings.precision else spec.with_settings(precision=p, tf32=p == "tf32")

    def reached(c) -> dict[str, Any] | None:
        if target is None or c.error:
            return None
        got = steps_to_target(c.probe_steps, c.recon, target.recon, batch, steps)
        return {"steps": got.steps, "samples": got.samples, "budget_steps": steps}

    return [{"spec_name": spec.name, "spec_hash": own(c).hash, "spec": own(c).to_dict(), "kmer": kmer,
             "batch": batch, "precision": getattr(c, "precision", "fp32"), "steps": steps, "every": every,
             "data": data or "synthetic", "training_rows": getattr(c, "data", {}), "finished_at": now,
             "curve": c.to_dict(), "verdict": v.to_dict(), "tolerances": tolerances,
             "target": target.to_dict() if target else None, "steps_to_target": reached(c),
             **({"why_no_target": why_no_target} if target is None and why_no_target else {})}
            for c, v in zip(curves, verdicts, strict=True)]


class TargetReader:
    """The run's target (``harness.diagnose.target``): the user's ``--target-recon``, or read off the reference's
    float32 curve at the first batch as soon as that curve is trained, before any record of the run is stored."""

    def __init__(self, reference_label: str, user_recon: float | None = None) -> None:
        from harness.diagnose.target import user_target

        self.reference_label = reference_label
        self.target = user_target(user_recon) if user_recon is not None else None
        #: why there is no target, once the reference's curve could not give one
        self.why_none: str | None = None

    def see(self, curves: list, steps: int, batch: int):
        from harness.diagnose.target import reference_target

        ref = next((c for c in curves if c.impl == self.reference_label and not c.error and c.probe_steps
                    and getattr(c, "precision", "fp32") == "fp32"), None)
        if self.target is None and self.why_none is None and ref is not None:
            try:
                self.target = reference_target(ref.probe_steps, ref.recon, steps, batch, self.reference_label)
            except ValueError as exc:
                self.why_none = str(exc)
        return self.target


def floor_label(reference_label: str) -> str:
    """The row label of the reference's run from weights one ulp apart, whose gaps set the tolerances."""
    return f"{reference_label} (1 ulp)"


def run_curves(spec, kmer: int | None, impls: list[str], steps: int, batch: int, every: int,
               reference: str = "torch", noise_floor: bool = True, data: str | None = None,
               columns: str | None = None, timeout_s: float = 1800,
               on_judged: Callable[[list, list], None] | None = None,
               precisions: list[str] | None = None, train_rows: int | None = None,
               stop_at_recon: float | None = None, launcher=None) -> tuple[list, list]:
    """Curves and verdicts; the reference impl runs first and, with ``noise_floor``, again from weights one
    ulp apart (labelled ``<reference> (1 ulp)``), whose gaps set the tolerances.

    ``precisions`` (default: the spec's own): every impl trains once in each; the reference and its floor run in
    float32 whatever they are, and a curve in another precision is labelled ``<impl> <precision>`` and judged
    against the float32 reference (``harness.diagnose.curves``).

    ``on_judged(curves, verdicts)`` gets each curve with its verdict as soon as it can be judged: the
    reference and its 1-ulp run together, once both are trained, then every other impl as its worker ends
    (a verdict needs only those two curves). A crash, a kill or a full disk later loses none of them: the
    curves had all been held until the last impl finished (issue 27)."""
    from harness.adapter import impl_label
    from harness.diagnose.curves import judge
    from harness.run.curves import CurveRun, train_curves

    order = [reference] + [i for i in impls if i != reference]
    if precisions is None or precisions == [spec.settings.precision]:
        runs = [CurveRun(i, impl_label(i)) for i in order]
    else:  # the float32 reference first; then each precision's impls, fp32's other than the reference
        runs = [CurveRun(reference, impl_label(reference), precision="fp32")]
        runs += [CurveRun(i, impl_label(i) if p == "fp32" else f"{impl_label(i)} {p}", precision=p)
                 for p in precisions for i in order if (i, p) != (reference, "fp32")]
    floor = floor_label(impl_label(reference)) if noise_floor else None
    if floor:
        runs.insert(1, CurveRun(reference, floor, nudge=True, precision=runs[0].precision))
    done: list = []

    def finished(curve) -> None:
        done.append(curve)
        first = 2 if floor else 1  # the reference (and its floor) are judged together
        if on_judged is not None and len(done) >= first:
            verdicts = judge(done, reference=impl_label(reference), floor=floor)
            new = slice(0, first) if len(done) == first else slice(-1, None)
            on_judged(done[new], verdicts[new])

    curves = train_curves(spec, kmer, runs, steps, batch, every, data=data, columns=columns, timeout_s=timeout_s,
                          on_curve=finished, train_rows=train_rows, stop_at_recon=stop_at_recon, launcher=launcher)
    return curves, judge(curves, reference=impl_label(reference), floor=floor)


def run_batches(spec, kmer: int | None, impls: list[str], steps: int, batches: list[int], every: int,
                reader: TargetReader, reference: str = "torch", noise_floor: bool = True, data: str | None = None,
                columns: str | None = None, timeout_s: float = 1800,
                on_judged: Callable[[list, list], None] | None = None,
                precisions: list[str] | None = None, launcher=None) -> list[tuple[int, list, list]]:
    """Curves at several batches, for the steps to a target per batch (``harness.diagnose.target``): every impl
    at the first batch (``run_curves``: their verdicts show whether the reference's steps stand for theirs), then
    the reference alone at each other batch, stopped at the first probe that meets the target. Every batch
    trains on the same rows (``train_rows`` for the largest batch: no row seen twice at any of them) and is
    judged on the same held-out rows. Returns (batch, curves, verdicts) per batch trained; the other batches are
    not trained when the first gave no target (the reference failed there). ``launcher``: None trains here; a
    ``harness.run.slurm.curve_jobs.SlurmCurves`` trains each batch's curves as one Slurm job array."""
    from harness.run.curve_data import synthetic_train_rows

    rows = synthetic_train_rows(steps, max(batches))
    first, *rest = batches

    def seen_first(curves: list, verdicts: list) -> None:
        reader.see(curves, steps, first)
        if on_judged is not None:
            on_judged(curves, verdicts)

    curves, verdicts = run_curves(spec, kmer, impls, steps, first, every, reference, noise_floor, data, columns,
                                  timeout_s, on_judged=seen_first, precisions=precisions, train_rows=rows,
                                  launcher=launcher)
    reader.see(curves, steps, first)
    out = [(first, curves, verdicts)]
    for batch in rest:
        if reader.target is None:
            break
        c, v = run_curves(spec, kmer, [reference], steps, batch, every, reference, False, data, columns, timeout_s,
                          on_judged=on_judged, train_rows=rows, stop_at_recon=reader.target.recon, launcher=launcher)
        out.append((batch, c, v))
    return out


def print_targets(target, reference: str, per_batch: list[tuple[int, list, list]], steps: int,
                  why: str | None = None) -> None:
    """The steps (and samples) the reference took to reach the target at each batch."""
    from rich.console import Console
    from rich.table import Table

    from harness.diagnose.target import steps_to_target

    if target is None:
        Console().print(f"no target: {why or f'{reference} has no curve at batch {per_batch[0][0]} to read it from'}")
        return
    table = Table(title=f"steps to target ({target.describe()}) for {reference}")
    for col in ("batch", "steps to target", "samples"):
        table.add_column(col)
    for batch, curves, _ in per_batch:
        ref = next((c for c in curves if c.impl == reference and not c.error), None)
        if ref is None:
            table.add_row(f"{batch:,}", "no curve", "-")
            continue
        got = steps_to_target(ref.probe_steps, ref.recon, target.recon, batch, steps)
        table.add_row(f"{batch:,}", got.describe() if got.steps is None else f"{got.steps:,}",
                      "-" if got.samples is None else f"{got.samples:,}")
    Console().print(table)


class CurveWriter:
    """Appends each judged impl's record as ``run_curves`` hands it over. A record that cannot be written
    (a full disk, a link in the way) is printed to stderr as one JSON line instead, so that what was trained
    can be saved by hand, and ``failed`` says why; the next impl is still trained and tried."""

    def __init__(self, root: str, run_id: str, make_records: Callable[[list, list], list[dict[str, Any]]]) -> None:
        self.root, self.run_id, self.make_records = root, run_id, make_records
        self.records: list[dict[str, Any]] = []
        self.path = None
        self.failed: str | None = None

    def __call__(self, curves: list, verdicts: list) -> None:
        from harness.store import StoreError, append_curves

        records = self.make_records(curves, verdicts)
        self.records += records
        try:
            self.path = append_curves(self.root, self.run_id, records)
        except StoreError as exc:
            for rec in records:
                print(json.dumps(rec, default=str), file=sys.stderr)
            self.failed = str(exc)

    def stop_line(self) -> str:
        return (f"{self.failed}; the curve records above (one JSON line each) were trained but not stored: free "
                f"space or pick another --results, and save them from this output")


def curve_launcher(args: argparse.Namespace, run_id: str):
    """``--launcher slurm``: the curves' workers as Slurm job arrays (``harness.run.slurm.curve_jobs``), their
    inputs under ``<results>/slurm/<run-id>/curves/``; else None (here)."""
    from bench.slurm_args import slurm_options

    options = slurm_options(args)
    if options is None:
        return None
    from harness.run.slurm.curve_jobs import SlurmCurves
    from harness.run.slurm.submit import slurm_dir

    return SlurmCurves(options, slurm_dir(args.results, run_id) / "curves", run_id)


def cmd_curves(args: argparse.Namespace) -> int:
    from bench.data_check import check_data
    from harness.adapter import impl_label
    from harness.diagnose.preflight import detect_device_memory
    from harness.run.runner import TF32_ON_CPU, cell_kmer
    from harness.spec.presets import resolve_spec
    from harness.store import check_results_dir, new_run_id, validate_run_id


    if args.every > args.steps:
        raise UsageError(f"--every {args.every} is more than --steps {args.steps}; probe at most every step")
    impls = checked_impls(args.impl)
    reference = checked_impls(args.reference)[0]  # a plug-in path, resolved as --impl's are
    if reference not in impls:
        raise UsageError(f"--reference {reference} is not among --impl {','.join(impls)}; add it, or pick one of them")
    spec = resolve_spec(args.spec, kmer=args.kmer)
    precisions = args.precision
    if precisions and "tf32" in precisions and detect_device_memory()[0] != "gpu":
        print(f"vaebench: curves: {TF32_ON_CPU}; no tf32 curves here", file=sys.stderr)
        precisions = [p for p in precisions if p != "tf32"] or None
    run_id = validate_run_id(args.run_id) if args.run_id else new_run_id()
    kmer = cell_kmer(spec, args.kmer)
    # before any training (issue 27): an unwritable --results lost every curve at the write, and a --data file
    # of NaN rows trained and read "differs"
    check_results_dir(args.results)
    check_data(argparse.Namespace(data=args.data, columns=args.columns, batch=args.batch, kmer=kmer, wrap=False),
                {spec.input_length})
    batches = args.batch
    if not args.json:
        print(f"curves {run_id}: {spec.name}, {args.steps} steps at batch {batches[0]}, {len(impls)} impl(s)"
              + (f"; {reference} alone at batch {', '.join(map(str, batches[1:]))} until the target" if batches[1:]
                 else "") + " ...", file=sys.stderr)
    reader = TargetReader(impl_label(reference), args.target_recon)
    store = CurveWriter(args.results, run_id, lambda curves, verdicts: curve_records(
        spec, kmer, curves[0].batch, args.steps, args.every, curves, verdicts, args.data, reader.target,
        reader.why_none))
    per_batch = run_batches(spec, kmer, impls, args.steps, batches, args.every, reader, reference,
                            not args.no_noise_floor, args.data, args.columns, args.timeout, on_judged=store,
                            precisions=precisions, launcher=curve_launcher(args, run_id))
    verdicts = [v for _, _, vs in per_batch for v in vs]
    if args.json:
        print(json.dumps(store.records, indent=2, default=str))
    else:
        print_verdicts(spec.name, args.steps, batches[0], per_batch[0][2])
        print_targets(reader.target, impl_label(reference), per_batch, args.steps, reader.why_none)
    if store.failed:
        print(f"vaebench: {store.stop_line()}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"curves stored in {store.path}", file=sys.stderr)
    return 0 if all(v.passed for v in verdicts) else 1


def print_verdicts(spec_name: str, steps: int, batch: int, verdicts: list) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.diagnose.curves import KL_COLLAPSE_NATS

    v0 = verdicts[0] if verdicts else None
    where = "5 x the 1-ulp floor" if v0 and v0.tol_source == "floor" else "fixed, no floor run"
    table = Table(title=f"training curves of {spec_name}, {steps} steps at batch {batch}, against "
                        f"{v0.reference if v0 else '?'} (parted: smoothed loss > {v0.tol_part if v0 else 0:.3%} apart; "
                        f"final recon tolerance {v0.tol_final if v0 else 0:.3%}; {where})")
    for col in ("impl", "precision", "final recon vs ref", "parted at step", "largest gap", "NaN/inf at",
                "top latent KL", "KL collapse", "verdict"):
        table.add_column(col)
    for v in verdicts:
        if v.error:
            table.add_row(v.impl, v.precision, "-", "-", "-", "-", "-", "-", f"[red]failed: {v.error}[/red]")
            continue
        table.add_row(v.impl, v.precision, "-" if v.final_recon is None else f"{v.final_recon:.2%}",
                      "never" if v.parted_at is None else str(v.parted_at),
                      "-" if v.max_part is None else f"{v.max_part:.2%}",
                      "none" if v.nonfinite_at is None else str(v.nonfinite_at),
                      "-" if v.kl_max_dim is None else f"{v.kl_max_dim:.3g} nats",
                      f"[yellow]collapsed (< {KL_COLLAPSE_NATS} nats)[/yellow]" if v.kl_collapse else "no",
                      _verdict_text(v))
    Console().print(table)
    if any(v.against_another_precision for v in verdicts):
        from harness.diagnose.curves import TOL_FINAL_PRECISION

        Console().print(f"a curve in another precision is judged against the float32 reference by where it ends (final "
                        f"recon within {TOL_FINAL_PRECISION:.0%}, no NaN, no KL collapse float32 does not show); the "
                        "step it parted at is where it left float32's path")


def _verdict_text(v) -> str:
    if not v.passed:
        return "[red]differs[/red]"
    if v.against_another_precision:
        parted = "never parted" if v.parted_at is None else f"parted at step {v.parted_at}"
        return f"[green]trains as fp32 does ({parted})[/green]"
    return "[green]trains the same[/green]"
