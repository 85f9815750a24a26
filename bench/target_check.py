"""``python -m bench target-check``: does the separable time to target match whole runs timed end to end?

The report's time to target is ``compile + (steps - 1) x mean step`` (``harness.diagnose.target``), the steps
from the reference's curve and the times from each impl's cell. This verb checks that shortcut directly:

1. **curves** (``bench.curves.run_batches``): every impl at the first batch (do they train as the reference
   does?), the reference at each other batch until it meets the target; the target is read at the first batch.
2. **cells**: ``--repeats`` separate ``python -m bench run`` processes, each its own run (so every compile is
   cold, as in a user's first run), for every impl and batch. Each gives one separable figure, computed by the
   report's own code (``reports.time_to_target.spec_targets``).
3. **direct runs** (``harness.run.to_target``): ``--repeats`` fresh workers per impl and batch, each training
   from the same weights on the same batches and noise until the held-out reconstruction meets the target,
   its steps timed end to end (first step included, held-out readings excluded; glibc's heap thresholds fixed so
   that the readings' numpy temporaries cost the steps nothing: ``harness.run.to_target.DIRECT_RUN_ENV``).

Per (impl, batch), the separable figures of the repeats and the direct times each give a mean and a 95% CI
(Student's t over the repeats: process to process, compile and step times vary more than one cell's windows
show). The two **agree** when their CIs overlap. The record is stored under
``<results>/target-check/<run-id>.json``; exit 1 when a pair disagrees or fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.parser import UsageError, checked_impls

REPO = Path(__file__).resolve().parents[1]


def _cells(args: argparse.Namespace, run_id: str, repeat: int) -> str:
    """One ``bench run`` process over every impl and batch: one repeat of every cell, cold compiles."""
    cell_run = f"{run_id}-cells-{repeat}"
    cmd = [sys.executable, "-m", "bench", "run", "--spec", args.spec, "--impl", ",".join(args.impls),
           "--batch", ",".join(map(str, args.batch)), "--results", args.results, "--run-id", cell_run,
           "--heap", "off", "--no-progress"]
    if args.kmer is not None:
        cmd += ["--kmer", str(args.kmer)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"target-check: the cells of repeat {repeat} did not run: {tail}")
    return cell_run


def _separable(args, spec, kmer, cell_runs: list[str], curves: list[dict]) -> dict[tuple[str, int], list]:
    """Per (impl label, batch): the report's separable figure from each repeat's cell."""
    from harness.store import load_rows
    from reports.cells import group_cells
    from reports.time_to_target import spec_targets

    out: dict[tuple[str, int], list] = {}
    for run in cell_runs:
        grouped = group_cells(load_rows([run], args.results))
        for key, by_batch in grouped.items():
            if key[0] != spec.name or key[2] != kmer:
                continue
            st = spec_targets(spec.name, kmer, by_batch, curves)
            for cell in (st.cells if st else []):
                out.setdefault((cell.label, cell.batch), []).append(cell)
    return out


def cmd_target_check(args: argparse.Namespace) -> int:
    from bench.curves import CurveWriter, TargetReader, curve_records, print_verdicts, run_batches
    from harness.adapter import impl_label
    from harness.run.curve_data import synthetic_train_rows
    from harness.run.curves import curve_inputs
    from harness.run.runner import cell_kmer
    from harness.run.to_target import DIRECT_RUN_ENV, run_to_target
    from harness.spec.presets import resolve_spec
    from harness.store import check_results_dir, new_run_id

    args.impls = checked_impls(args.impl)
    if args.reference not in args.impls:
        raise UsageError(f"--reference {args.reference} is not among --impl {','.join(args.impls)}; add it")
    if args.repeats < 2:
        raise UsageError("--repeats must be at least 2: the check compares two 95% CIs over repeats")
    spec = resolve_spec(args.spec, kmer=args.kmer)
    kmer = cell_kmer(spec, args.kmer)
    check_results_dir(args.results)
    run_id = args.run_id or new_run_id()
    started = time.perf_counter()
    print(f"target-check {run_id}: {spec.name}, k={kmer}, {', '.join(args.impls)} at batch "
          f"{', '.join(map(str, args.batch))}, {args.repeats} repeats", file=sys.stderr)

    reader = TargetReader(impl_label(args.reference), args.target_recon)
    writer = CurveWriter(args.results, run_id, lambda curves, verdicts: curve_records(
        spec, kmer, curves[0].batch, args.steps, args.every, curves, verdicts, None, reader.target))
    per_batch = run_batches(spec, kmer, args.impls, args.steps, args.batch, args.every, reader, args.reference,
                            noise_floor=True, on_judged=writer)
    print_verdicts(spec.name, args.steps, args.batch[0], per_batch[0][2])
    if reader.target is None:
        print("vaebench: target-check: the reference has no curve to read a target from", file=sys.stderr)
        return 1
    cell_runs = []
    for r in range(args.repeats):
        print(f"cells, repeat {r + 1} of {args.repeats} ...", file=sys.stderr)
        cell_runs.append(_cells(args, run_id, r))
    separable = _separable(args, spec, kmer, cell_runs, writer.records)

    direct: dict[tuple[str, int], list] = {}
    with tempfile.TemporaryDirectory(prefix="vaebench-target-") as tmp:
        rows = synthetic_train_rows(args.steps, max(args.batch))
        data, inputs = curve_inputs(spec, kmer, rows, Path(tmp), spec.settings.seed)
        np.savez(Path(tmp) / "inputs.npz", **inputs)
        for r in range(args.repeats):
            for batch in args.batch:
                for impl in args.impls:
                    print(f"direct run {r + 1}/{args.repeats}: {impl} at batch {batch} ...", file=sys.stderr)
                    run = run_to_target(spec, impl, batch, Path(tmp) / "inputs.npz",
                                        {"path": data.path, "columns": data.columns, "train_rows": data.train_rows},
                                        reader.target.recon, args.steps, args.every)
                    direct.setdefault((impl_label(impl), batch), []).append(run)
    pairs = [_compare(label, batch, separable.get((label, batch), []), runs)
             for (label, batch), runs in direct.items()]
    record = {"run_id": run_id, "spec_name": spec.name, "kmer": kmer, "impls": args.impls, "batches": args.batch,
              "repeats": args.repeats, "steps": args.steps, "every": args.every, "target": reader.target.to_dict(),
              "cell_runs": cell_runs, "direct_env": DIRECT_RUN_ENV, "wall_s": round(time.perf_counter() - started, 1),
              "pairs": pairs}
    out = Path(args.results) / "target-check" / f"{run_id}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str))
    _print(record)
    print(f"target-check stored in {out}", file=sys.stderr)
    return 0 if all(p["agree"] for p in pairs) else 1


def _compare(label: str, batch: int, cells: list, runs: list) -> dict[str, Any]:
    """The separable figures against the direct runs of one (impl, batch)."""
    from harness.measure.stats import mean_ci95

    errors = [r.error for r in runs if r.error]
    sep = [c.time.seconds for c in cells if c.time is not None]
    got = [r.train_s for r in runs if r.error is None and r.steps is not None]
    s_mean, s_low, s_high = mean_ci95(sep)
    d_mean, d_low, d_high = mean_ci95(got)
    agree = (not errors and len(sep) >= 2 and len(got) >= 2 and s_low <= d_high and d_low <= s_high)
    return {"impl": label, "batch": batch,
            "steps_separable": sorted({c.steps.steps for c in cells if c.steps and c.steps.reached}),
            "steps_direct": sorted({r.steps for r in runs if r.error is None}, key=lambda s: (s is None, s or 0)),
            "basis": sorted({c.note or "reference's own curve" for c in cells}),
            "separable_s": sep, "separable_mean_s": s_mean, "separable_ci95": [s_low, s_high],
            "report_ci95": [[c.time.ci_low, c.time.ci_high] for c in cells if c.time is not None],
            "direct_s": got, "direct_mean_s": d_mean, "direct_ci95": [d_low, d_high],
            "direct_first_step_s": [r.first_step_s for r in runs if r.error is None],
            "compile_s": [c.compile_s for c in cells], "mean_step_s": [c.mean_s for c in cells],
            "ratio": d_mean / s_mean if s_mean else None, "errors": errors, "agree": bool(agree)}


def _print(record: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from harness.diagnose.target import Target

    table = Table(title=f"time to target, separable against direct: {record['spec_name']}, k={record['kmer']} "
                        f"({Target.from_dict(record['target']).describe()}; {record['repeats']} repeats, 95% CIs)")
    for col in ("impl", "batch", "steps (curve / direct)", "separable s", "direct s", "direct / separable", "agree"):
        table.add_column(col)
    for p in record["pairs"]:
        ci = lambda m, lo_hi: f"{m:.2f} [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]"  # noqa: E731
        table.add_row(p["impl"], f"{p['batch']:,}",
                      f"{','.join(map(str, p['steps_separable'])) or '-'} / {','.join(map(str, p['steps_direct']))}",
                      ci(p["separable_mean_s"], p["separable_ci95"]), ci(p["direct_mean_s"], p["direct_ci95"]),
                      "-" if p["ratio"] is None else f"{p['ratio']:.3f}",
                      "[green]yes[/green]" if p["agree"] else f"[red]no[/red] {'; '.join(p['errors'])}")
    Console().print(table)
