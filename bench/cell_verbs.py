"""The verbs that run cells: ``run``, ``preflight``, ``sweep`` and ``matrix`` (the main command).

Each checks its flags, plans cells, hands them to ``harness.run`` and prints; heavy modules are
imported inside the verb, so ``python -m bench`` answers a bad flag without loading them."""

from __future__ import annotations

import argparse
import json
import os
import sys

from bench.data_check import check_data
from bench.parser import UsageError, split_list, with_precisions
from bench.parser import checked_impls as _impls
from bench.result_verbs import params_from_rows
from harness.spec.presets import resolve_spec


def _specs(text: str | None, default: list[str]) -> list[str]:
    return split_list(text, "--spec") if text is not None else default


#: stores whose lock this invocation holds; ``main`` releases them however the verb ends
_LOCKED: list = []


def _store(args: argparse.Namespace):
    """The run's store, checked and locked before any worker starts.

    In order, each failure one line and exit 2: the run id is a plain name (nothing written
    otherwise); ``--results`` can be created and written (a probe file), and its ``cache`` is a directory
    if it is there; no other process is
    writing the run (its pid is named); an existing run is continued only with ``--resume``.
    """
    from harness.store import ResultsDirError, ResultStore, check_results_dir, new_run_id, validate_run_id

    if getattr(args, "keep_failed", False) and not args.resume:
        raise UsageError("--keep-failed only applies with --resume")
    if args.run_id is not None:
        validate_run_id(args.run_id)
    try:
        check_results_dir(args.results, compile_cache=True)
    except ResultsDirError as exc:
        raise UsageError(f"{exc}; pass --results DIR") from None
    if args.resume and not args.run_id:
        store = ResultStore.latest(args.results)
        if store is None:
            raise UsageError(f"--resume: no earlier run in {args.results}; run without --resume first")
    else:
        store = ResultStore(args.results, args.run_id or new_run_id())
    store.lock()
    _LOCKED.append(store)
    if not args.resume and store.path.exists():
        raise UsageError(f"run {store.run_id} already has results in {store.path}; pass a new --run-id, "
                         f"or --resume to continue it")
    return store


def _exit_status(store, keys: set[str]) -> int:
    """1 when any of this invocation's cells (``keys``) ended failed (its latest row), else 0."""
    failed = [r for r in store.latest_rows() if r.identity.cell_key in keys and r.status == "failed"]
    if not failed:
        return 0
    kinds = sorted({str(r.outcome.failure_kind) for r in failed})
    print(f"vaebench: {len(failed)} of {len(keys)} cells failed ({', '.join(kinds)}); "
          f"rerun them with --resume --run-id {store.run_id}", file=sys.stderr)
    return 1


def _apply_keras_loop(cells: list, loop: str | None, confirm: str | None = None) -> None:
    """``--keras-loop``: a Keras row's loop is part of what it measures, so it joins the cell's identity;
    without the flag the build's default (``fit``) runs and the key stays as before. ``--confirm`` likewise
    (``harness.run.confirm``): it decides what a leak verdict can say."""
    for cell in cells:
        if loop and cell.impl.startswith("keras-"):
            cell.loop = loop
        if confirm:
            cell.confirm = confirm


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bench.slurm_args import interrupted_note, run_cells, slurm_options
    from harness.run.runner import plan_cells

    if args.data:  # workers start in the repo root: hand them an absolute path
        try:
            args.data = str(Path(args.data).resolve())
        except (OSError, RuntimeError):  # a link loop: check_data below names it in one line
            args.data = os.path.abspath(args.data)
    impls = _impls(args.impl)
    specs = with_precisions([resolve_spec(s, kmer=args.kmer).with_clip_norm(args.clip_norm)
                             for s in _specs(args.spec, ["dense"])], args.precision, args.tf32)
    check_data(args, {spec.input_length for spec in specs})
    cells = plan_cells(impls, specs, args.kmer, args.batch, args.repeats, steps=args.steps,
                       scenario=args.scenario, inject_leak_bytes=args.inject_leak or 0, data=args.data,
                       columns=args.columns, timeout_s=args.timeout, heap=args.heap,
                       time_budget_s=args.cell_budget)
    _apply_keras_loop(cells, args.keras_loop, args.confirm)
    if args.scenario:
        from harness.diagnose.scenarios import check_scenario

        for cell in cells:
            check_scenario(args.scenario, cell.impl)
    launcher = slurm_options(args)
    store = _store(args)
    preflight = None if args.no_preflight else _preflight_hook(args)
    print(f"run {store.run_id}: {len(cells)} cells -> {store.path}", file=sys.stderr)
    _print_resume(args, cells, store)
    try:
        rows = run_cells(launcher, cells, store, resume=args.resume, preflight=preflight, progress=not args.no_progress,
                         memory_limit_bytes=args.memory_limit, keep_failed=args.keep_failed, peak=not args.no_peak,
                         refresh_peak=args.remeasure_peak)
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; {len(store.rows())} finished rows kept in {store.path}{interrupted_note(launcher)}; "
              f"continue with --resume --run-id {store.run_id}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from bench.render import print_rows

        print_rows(store.latest_rows())
    return _exit_status(store, {c.key for c in cells})


def _print_resume(args: argparse.Namespace, cells: list, store) -> None:
    if args.resume:
        from harness.run.runner import plan_resume

        print(f"resume {store.run_id}: {plan_resume(cells, store, args.keep_failed).summary()}", file=sys.stderr)


def _preflight_hook(args: argparse.Namespace):
    try:
        from harness.diagnose.preflight import preflight_cell
    except ImportError:
        return None
    # the probe-int32 cache lives under the run's results directory
    return lambda cell: preflight_cell(cell, device_memory=getattr(args, "device_memory", None),
                                       results_dir=getattr(args, "results", None))


def cmd_preflight(args: argparse.Namespace) -> int:
    from harness.diagnose.preflight import preflight

    device = "gpu" if args.gpu else None
    impl = _preflight_impl(args.impl)
    worst = 0
    reports = []
    for spec in with_precisions([resolve_spec(args.spec, kmer=args.kmer)], args.precision):
        rep = preflight(spec, args.batch, args.eval_batch, device_memory=args.device_memory, device=device,
                        int32_applies=True if args.gpu else None, impl=impl, results_dir=args.results)
        reports.append(rep)
        if not args.json:
            from bench.render import print_preflight

            print_preflight(rep, show_all=not args.flags_only)
        if not rep.ok:
            print(f"vaebench: preflight: cannot run {spec.name} in {spec.settings.precision} at batch {args.batch}: "
                  f"{rep.reasons[0]}", file=sys.stderr)
            worst = 3
    if args.json:
        out = [r.to_dict() for r in reports]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    return worst


def _preflight_impl(text: str | None) -> str | None:
    """One impl: a built-in name, or a plug-in (whose framework is unknown, so every overflow is a warning)."""
    if text is None:
        return None
    impls = _impls(text)
    if len(impls) != 1:
        raise UsageError(f"preflight --impl takes one impl, got {text!r}; leave it out to see every impl side by side")
    return impls[0]


def cmd_sweep(args: argparse.Namespace) -> int:
    from bench.slurm_args import slurm_options
    from harness.measure.fingerprint import machine_fingerprint
    from harness.run.runner import cell_kmer
    from harness.run.sweep import sweep_impl

    impls = _impls(args.impl)
    specs = with_precisions([resolve_spec(s, kmer=args.kmer) for s in _specs(args.spec, ["dense"])], args.precision,
                            args.tf32)
    launcher = slurm_options(args)
    store = _store(args)
    preflight = None if args.no_preflight else _preflight_hook(args)
    run_cell = None
    if launcher is not None:  # each probe one Slurm job: its batch depends on the probe before
        from harness.run.slurm.launcher import slurm_cell_runner

        run_cell = slurm_cell_runner(store, launcher, preflight, memory_limit_bytes=args.memory_limit)
    print(f"sweep {store.run_id} -> {store.path}", file=sys.stderr)
    results = []
    import signal

    def interrupt(signum, frame):  # noqa: ARG001 - SIGTERM ends a sweep as Ctrl-C does: probe killed, rows kept
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        for spec in specs:
            fingerprint = machine_fingerprint(spec.settings)
            for impl in impls:
                def show(batch: int, row: dict, impl=impl, spec=spec) -> None:
                    outcome = "ok" if row["status"] == "ok" else row["failure_kind"]
                    print(f"  {impl} {spec.name} batch {batch}: {outcome}", file=sys.stderr)

                results.append(sweep_impl(impl, spec, cell_kmer(spec, args.kmer), store, fingerprint, start=args.start,
                                          max_batch=args.max_batch, timeout_s=args.timeout, preflight=preflight,
                                          memory_limit_bytes=args.memory_limit, on_probe=show, run_cell=run_cell))
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; probes so far are kept in {store.path}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        from bench.render import print_sweep

        print_sweep(results)
    # a probe failing at a memory, int32 or time limit is how a search ends; anything else is a failure
    problems = [p for p in (r.problem() for r in results) if p]
    for problem in problems:
        print(f"vaebench: sweep failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """The main job: default matrix, then the report."""
    from bench.slurm_args import interrupted_note, run_cells, slurm_options
    from harness.diagnose.preflight import detect_device_memory
    from harness.run.matrix import matrix_cells, matrix_precisions, plan_default

    device = "cpu" if args.cpu else ("gpu" if args.gpu else detect_device_memory()[0])
    plan = plan_default(args.kmer, device, budget_s=args.budget_minutes * 60 if args.budget_minutes else None,
                        impls=_impls(args.impl) if args.impl else None,
                        specs=_specs(args.spec, []) or None, batches=args.batch)
    plan.specs = [(spec.with_clip_norm(args.clip_norm), batches) for spec, batches in plan.specs]
    unknown = [reason for _, reason in plan.invalid if reason.startswith("unknown spec")]
    if unknown:  # a name the user typed wrong is a mistake in the arguments, not a preset to skip (issue 27)
        raise UsageError(unknown[0])
    launcher = slurm_options(args)
    store = _store(args)
    precisions = matrix_precisions(device, ["tf32"] if args.tf32 and args.precision is None else args.precision)
    planned = matrix_cells(plan, args.kmer, steps=args.steps, repeats=args.repeats, timeout_s=args.timeout,
                           precisions=precisions, device_memory=args.device_memory, results_dir=args.results)
    cells, runnable = planned.cells, planned.runnable
    if not cells:  # every named spec was skipped at this k: no run, no empty report
        raise UsageError(f"matrix: no cell to run at k={args.kmer}: "
                         + "; ".join(f"{name}: {reason}" for name, reason in plan.invalid))
    for name, reason in plan.invalid:
        print(f"skipped preset {name}: {reason}", file=sys.stderr)
    for impl, reason in plan.omitted_impls:
        print(f"omitted {impl}: {reason}", file=sys.stderr)
    _apply_keras_loop(cells, args.keras_loop, args.confirm)
    print(f"matrix {store.run_id} on {device}: {len(cells)} cells ({len(runnable)} runnable)"
          + (f", {plan.budget_s:.0f} s for all of them" if plan.budget_s else "") + f" -> {store.path}",
          file=sys.stderr)
    _print_resume(args, cells, store)
    try:
        run_cells(launcher, cells, store, resume=args.resume, preflight=planned.preflight, progress=not args.no_progress,
                  budget_s=plan.budget_s, runnable={c.key for c in runnable}, keep_failed=args.keep_failed,
                  peak=True, refresh_peak=args.remeasure_peak)
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; finished rows kept in {store.path}{interrupted_note(launcher)}; continue with "
              f"nox -s bench -- --kmer {args.kmer} --resume --run-id {store.run_id}", file=sys.stderr)
        return 130
    curves_lost = _matrix_curves(args, plan, store, precisions)
    from reports.build import build_report

    rows = store.latest_rows()
    path = build_report([store.path], out_root=args.out, run_id=store.run_id, params_check=params_from_rows(rows))
    from bench.render import print_rows

    print_rows([r for r in rows if not r.get("sweep") and not r.get("scenario")])
    print(f"report: {path}")
    if curves_lost:  # the rows and the report stand; the curves printed above could not be stored
        print(f"vaebench: {curves_lost}", file=sys.stderr)
        return 1
    return _exit_status(store, {c.key for c in cells})


def _matrix_curves(args: argparse.Namespace, plan, store, precisions: list[str] | None = None) -> str | None:
    """The matrix's training curves (``bench.curves.MATRIX_CURVES``): the dense preset at the run's k, every impl
    of the plan at dense's smallest batch in each of the matrix's precisions (a bf16 row is recommended only beside
    a bf16 curve that ends where fp32's does: ``reports.section_answer``; tf32 not on a CPU), then the reference
    alone at each other batch of dense until it reaches the target (the steps to target per batch that the
    report's time to target needs: ``harness.diagnose.target``), each stored beside the run's rows as it is
    judged; skipped when the plan has no dense cell, with ``--curves-steps 0``, or when the run holds every curve
    already (``--resume``: a run stopped midway trains them all again, and the report reads the latest record of
    each). Returns the line saying why curves could not be stored, if any could not (the matrix then exits 1
    after its report)."""
    from bench.curves import (
        MATRIX_CURVES,
        CurveWriter,
        TargetReader,
        curve_launcher,
        curve_records,
        floor_label,
        print_targets,
        print_verdicts,
        run_batches,
    )
    from harness.adapter import impl_label
    from harness.store import curves_path, read_rows

    default = MATRIX_CURVES["cpu_steps" if plan.device == "cpu" else "steps"]
    steps = default if args.curves_steps is None else args.curves_steps
    dense, batches = next(((spec, b) for spec, b in plan.specs if spec.name == MATRIX_CURVES["spec"]), (None, []))
    if not steps or dense is None:
        return None
    batches = sorted(batches)
    reference = "torch" if "torch" in plan.impls else plan.impls[0]
    precisions = [p for p in precisions or ["fp32"] if not (p == "tf32" and plan.device == "cpu")]
    wanted = ({(impl_label(i) if p == "fp32" else f"{impl_label(i)} {p}", batches[0]) for i in plan.impls
               for p in precisions} | {(floor_label(impl_label(reference)), batches[0])}
              | {(impl_label(reference), b) for b in batches})
    stored = curves_path(store.root, store.run_id)
    if stored.is_file() and wanted <= {((rec.get("curve") or {}).get("impl"), rec.get("batch"))
                                       for rec in read_rows(stored)}:
        return None
    every = min(MATRIX_CURVES["every"], steps)
    print(f"curves: {dense.name}, {steps} steps at batch {batches[0]}, {len(plan.impls)} impls"
          + (f"; {reference} alone at batch {', '.join(map(str, batches[1:]))} until the target" if batches[1:]
             else ""), file=sys.stderr)
    reader = TargetReader(impl_label(reference))
    writer = CurveWriter(store.root, store.run_id, lambda curves, verdicts: curve_records(
        dense, args.kmer, curves[0].batch, steps, every, curves, verdicts, None, reader.target, reader.why_none))
    per_batch = run_batches(dense, args.kmer, plan.impls, steps, batches, every, reader, reference,
                            timeout_s=args.timeout, on_judged=writer, precisions=precisions,
                            launcher=curve_launcher(args, store.run_id))
    print_verdicts(dense.name, steps, batches[0], per_batch[0][2])
    print_targets(reader.target, impl_label(reference), per_batch, steps, reader.why_none)
    return writer.stop_line() if writer.failed else None
