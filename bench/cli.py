"""``python -m bench VERB``: one verb per question the user asks.

Every user error (bad spec, flag, data file, missing framework) ends as one
line on stderr and exit status 2; the parent process never imports a
framework, workers do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from bench.curves import cmd_curves
from bench.fit_memory import VERB as FIT_MEMORY
from bench.fit_memory import cmd_fit_memory
from bench.parser import UsageError, build_parser, split_list
from bench.parser import checked_impls as _impls
from bench.probe import cmd_probe_int32
from harness.data import DataError
from harness.diagnose.scenarios import ScenarioError
from harness.spec.layers import SpecError
from harness.spec.presets import ALL_PRESETS, resolve_spec
from harness.store import StoreError


def _specs(text: str | None, default: list[str]) -> list[str]:
    return split_list(text, "--spec") if text is not None else default


# ------------------------------------------------------------------------- verbs


def cmd_params(args: argparse.Namespace) -> int:
    from harness.run.parity import check_params

    specs = [resolve_spec(name, kmer=args.kmer) for name in _specs(args.spec, list(ALL_PRESETS))]
    reports = check_params(specs, _impls(args.impl))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_params

        print_params(reports, args.kmer)
    return 0 if all(r.equal for r in reports) else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from harness.run.parity import check_parity
    from harness.run.runner import cell_kmer

    specs = [resolve_spec(name, kmer=args.kmer).with_clip_norm(args.clip_norm)
             for name in _specs(args.spec, ["dense", "conv-final", "conv-revised"])]
    specs = [(spec, cell_kmer(spec, args.kmer)) for spec in specs]
    reports = check_parity(specs, _impls(args.impl), batch=args.batch)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_parity

        print_parity(reports)
    return 0 if all(r.passed for r in reports) else 1


#: stores whose lock this invocation holds; ``main`` releases them however the verb ends
_LOCKED: list = []


def _store(args: argparse.Namespace):
    """The run's store, checked and locked before any worker starts.

    In order, each failure one line and exit 2: the run id is a plain name (nothing written
    otherwise); ``--results`` can be created and written (a probe file); no other process is
    writing the run (its pid is named); an existing run is continued only with ``--resume``.
    """
    from harness.store import ResultsDirError, ResultStore, check_results_dir, new_run_id, validate_run_id

    if getattr(args, "keep_failed", False) and not args.resume:
        raise UsageError("--keep-failed only applies with --resume")
    if args.run_id is not None:
        validate_run_id(args.run_id)
    try:
        check_results_dir(args.results)
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


def _check_data(args: argparse.Namespace, widths: set[int] | None = None) -> None:
    """Fail on a bad data file before any cell starts, not in the middle of the matrix."""
    if not getattr(args, "data", None):
        if getattr(args, "columns", None) is not None:
            raise UsageError(f"--columns {args.columns} picks a block of a --data file, and there is none; "
                             "pass --data FILE.npy, or drop --columns")
        if getattr(args, "wrap", False):
            raise UsageError("--wrap lets the rows of a --data file wrap around, and there is none; "
                             "pass --data FILE.npy, or drop --wrap")
        return
    from harness.data import check_rows, open_npy, validate_file
    from harness.spec.schema import canonical_kmer_count

    arr = open_npy(args.data, args.columns)
    check_rows(arr, max(args.batch), getattr(args, "wrap", False), f"data file {args.data}")
    widths = widths or {canonical_kmer_count(args.kmer)}
    if len(widths) > 1:
        raise UsageError(f"--data {args.data} feeds every cell, but the specs take {sorted(widths)} features; "
                         "run the specs one at a time")
    expected = next(iter(widths))
    if arr.shape[1] != expected:
        what = (f"k={args.kmer} has {expected} canonical k-mers" if args.kmer is not None
                and canonical_kmer_count(args.kmer) == expected else f"the spec takes {expected} features")
        raise DataError(f"data file {args.data} has {arr.shape[1]} columns but {what}; "
                        "pick the block with --columns A:B")
    validate_file(arr, f"data file {args.data}")


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

    from harness.run.runner import plan_cells, run_matrix

    if args.data:
        args.data = str(Path(args.data).resolve())  # workers start in the repo root
    impls = _impls(args.impl)
    specs = [resolve_spec(s, kmer=args.kmer).with_settings(tf32=args.tf32).with_clip_norm(args.clip_norm)
             for s in _specs(args.spec, ["dense"])]
    _check_data(args, {spec.input_length for spec in specs})
    cells = plan_cells(impls, specs, args.kmer, args.batch, args.repeats, steps=args.steps,
                       scenario=args.scenario, inject_leak_bytes=args.inject_leak or 0, data=args.data,
                       columns=args.columns, timeout_s=args.timeout, heap=args.heap)
    _apply_keras_loop(cells, args.keras_loop, args.confirm)
    if args.scenario:
        from harness.diagnose.scenarios import check_scenario

        for cell in cells:
            check_scenario(args.scenario, cell.impl)
    store = _store(args)
    preflight = None if args.no_preflight else _preflight_hook(args)
    print(f"run {store.run_id}: {len(cells)} cells -> {store.path}", file=sys.stderr)
    _print_resume(args, cells, store)
    try:
        rows = run_matrix(cells, store, resume=args.resume, preflight=preflight, progress=not args.no_progress,
                          memory_limit_bytes=args.memory_limit, keep_failed=args.keep_failed, peak=not args.no_peak)
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; {len(store.rows())} finished rows kept in {store.path}; "
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

    spec = resolve_spec(args.spec, kmer=args.kmer)
    device = "gpu" if args.gpu else None
    impl = _preflight_impl(args.impl)
    rep = preflight(spec, args.batch, args.eval_batch, device_memory=args.device_memory, device=device,
                    int32_applies=True if args.gpu else None, impl=impl, results_dir=args.results)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        from bench.render import print_preflight

        print_preflight(rep, show_all=not args.flags_only)
    if not rep.ok:
        print(f"vaebench: preflight: cannot run {spec.name} at batch {args.batch}: {rep.reasons[0]}", file=sys.stderr)
        return 3
    return 0


def _preflight_impl(text: str | None) -> str | None:
    """One impl: a built-in name, or a plug-in (whose framework is unknown, so every overflow is a warning)."""
    if text is None:
        return None
    impls = _impls(text)
    if len(impls) != 1:
        raise UsageError(f"preflight --impl takes one impl, got {text!r}; leave it out to see every impl side by side")
    return impls[0]


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.measure.fingerprint import machine_fingerprint
    from harness.run.runner import cell_kmer
    from harness.run.sweep import sweep_impl

    impls = _impls(args.impl)
    specs = [resolve_spec(s, kmer=args.kmer).with_settings(tf32=args.tf32) for s in _specs(args.spec, ["dense"])]
    store = _store(args)
    preflight = None if args.no_preflight else _preflight_hook(args)
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
                                          memory_limit_bytes=args.memory_limit, on_probe=show))
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
    from harness.diagnose.preflight import detect_device_memory
    from harness.run.matrix import matrix_cells, plan_default
    from harness.run.runner import run_matrix

    device = "cpu" if args.cpu else ("gpu" if args.gpu else detect_device_memory()[0])
    plan = plan_default(args.kmer, device, budget_s=args.budget_minutes * 60 if args.budget_minutes else None,
                        impls=_impls(args.impl) if args.impl else None,
                        specs=_specs(args.spec, []) or None, batches=args.batch)
    plan.specs = [(spec.with_clip_norm(args.clip_norm), batches) for spec, batches in plan.specs]
    store = _store(args)
    for name, reason in plan.invalid:
        print(f"skipped preset {name}: {reason}", file=sys.stderr)
    for impl, reason in plan.omitted_impls:
        print(f"omitted {impl}: {reason}", file=sys.stderr)
    planned = matrix_cells(plan, args.kmer, steps=args.steps, repeats=args.repeats, timeout_s=args.timeout,
                           tf32=args.tf32, device_memory=args.device_memory, results_dir=args.results)
    cells, runnable = planned.cells, planned.runnable
    _apply_keras_loop(cells, args.keras_loop, args.confirm)
    print(f"matrix {store.run_id} on {device}: {len(cells)} cells ({len(runnable)} runnable)"
          + (f", {plan.budget_s:.0f} s for all of them" if plan.budget_s else "") + f" -> {store.path}",
          file=sys.stderr)
    _print_resume(args, cells, store)
    try:
        run_matrix(cells, store, resume=args.resume, preflight=planned.preflight, progress=not args.no_progress,
                   budget_s=plan.budget_s, runnable={c.key for c in runnable}, keep_failed=args.keep_failed,
                   peak=True)
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; finished rows kept in {store.path}; continue with "
              f"nox -s bench -- --kmer {args.kmer} --resume --run-id {store.run_id}", file=sys.stderr)
        return 130
    _matrix_curves(args, plan, store)
    from reports.build import build_report

    rows = store.latest_rows()
    path = build_report([store.path], out_root=args.out, run_id=store.run_id, params_check=params_from_rows(rows))
    from bench.render import print_rows

    print_rows([r for r in rows if not r.get("sweep") and not r.get("scenario")])
    print(f"report: {path}")
    return _exit_status(store, {c.key for c in cells})


def _matrix_curves(args: argparse.Namespace, plan, store) -> None:
    """The matrix's short training-curves run (``bench.curves.MATRIX_CURVES``): the dense preset at the run's k,
    every impl of the plan, stored beside the run's rows; skipped when the plan has no dense cell, with
    ``--curves-steps 0``, or when the run already has curves (``--resume``)."""
    from bench.curves import MATRIX_CURVES, curve_records, print_verdicts, run_curves
    from harness.store import append_curves, curves_path

    default = MATRIX_CURVES["cpu_steps" if plan.device == "cpu" else "steps"]
    steps = default if args.curves_steps is None else args.curves_steps
    dense = next((spec for spec, _ in plan.specs if spec.name == MATRIX_CURVES["spec"]), None)
    if not steps or dense is None or curves_path(store.root, store.run_id).exists():
        return
    reference = "torch" if "torch" in plan.impls else plan.impls[0]
    batch, every = MATRIX_CURVES["batch"], min(MATRIX_CURVES["every"], steps)
    print(f"curves: {dense.name}, {steps} steps at batch {batch}, {len(plan.impls)} impls", file=sys.stderr)
    curves, verdicts = run_curves(dense, args.kmer, plan.impls, steps, batch, every, reference,
                                  timeout_s=args.timeout)
    append_curves(store.root, store.run_id, curve_records(dense, args.kmer, batch, steps, every, curves, verdicts,
                                                          None))
    print_verdicts(dense.name, steps, batch, verdicts)


def params_from_rows(rows: list[dict]) -> dict:
    """The parity-of-counts check from what each cell's worker read off its own model."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("param_counts"):
            entry = out.setdefault(r["spec_name"], {"expected": r["param_counts_expected"]})
            entry[r["row"]] = r["param_counts"]
    return out


def _load(sources: list[str], results_dir: str) -> list[dict]:
    """Stored rows, or one line naming the source that cannot be read and what to pass instead."""
    from harness.store import load_rows

    unreadable = (OSError, ValueError, AttributeError, TypeError, KeyError)
    try:
        return load_rows(sources, results_dir=results_dir)
    except FileNotFoundError as exc:
        raise UsageError(f"{exc}; pass a results .jsonl file, a directory of them or a run id "
                         "(see --results-dir)") from None
    except unreadable as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else \
            "a line is not a result row" if isinstance(exc, (AttributeError, TypeError, KeyError)) else \
            (str(exc).splitlines() or [type(exc).__name__])[0]
        culprit = ", ".join(sources)
        for source in sources:  # name the one that fails
            try:
                load_rows([source], results_dir=results_dir)
            except unreadable:
                culprit = source
                break
        raise UsageError(f"cannot read results from {culprit}: {reason}; pass a results .jsonl file written "
                         "by vaebench, a directory of them or a run id") from None


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.store import load_curves, validate_run_id
    from reports.build import build_report

    if args.run_id is not None:
        validate_run_id(args.run_id)
    sources = args.results or [args.results_dir]
    rows = _load(sources, args.results_dir)
    if not rows:
        raise UsageError(f"no results found in {', '.join(sources)}; run python -m bench run first")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"cannot write the report to {out}: it is a file, not a directory; pass --out DIR")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}; pass --out DIR") from None
    runs = {r.get("run_id") for r in rows}
    curves = [c for c in load_curves(sources, args.results_dir) if c.get("run_id") in runs]
    try:
        path = build_report(rows, out_root=out, run_id=args.run_id, params_check=params_from_rows(rows),
                            curves=curves)
    except OSError as exc:
        raise UsageError(f"cannot write the report to {out}: {exc.strerror or exc}; pass --out DIR") from None
    print(f"report: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Exit 0, or 1 with --fail-on-regression and a regression; 2 when a run cannot be read or the
    two runs share no cell (nothing to compare is a mistake in the arguments, not a pass)."""
    from reports.compare import cells_summary, compare_runs, print_comparison

    a = _load([args.run_a], args.results_dir)
    b = _load([args.run_b], args.results_dir)
    for name, rows in ((args.run_a, a), (args.run_b, b)):
        if not rows:
            raise UsageError(f"run {name!r} has no rows; pass a results file, directory or run id in {args.results_dir}")
    comparisons = compare_runs(a, b, threshold=args.threshold, alpha=args.alpha)
    if not comparisons:
        raise UsageError(f"{args.run_a} and {args.run_b} have no cell in common (impl, spec, batch and scenario): "
                         f"{args.run_a} has {cells_summary(a)}; {args.run_b} has {cells_summary(b)}")
    if args.json:
        print(json.dumps(comparisons, indent=2, default=str))
    else:
        print_comparison(comparisons, title=f"{args.run_b} against {args.run_a}")
    regressions = [c for c in comparisons if c.get("regression") or c.get("new_failure")]
    if regressions and args.fail_on_regression:
        print(f"vaebench: {len(regressions)} regression(s)", file=sys.stderr)
        return 1
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from harness.diagnose.scenarios import SCENARIOS

    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(s) for s in SCENARIOS.values()], indent=2))
    else:
        from bench.render import print_scenarios

        print_scenarios(SCENARIOS.values())
    return 0


def cmd_overhead(args: argparse.Namespace) -> int:
    from bench.overhead import measure_overhead

    spec = resolve_spec(args.spec, kmer=args.kmer)
    out = [measure_overhead(impl, spec, args.kmer, args.batch, args.steps, args.repeats) for impl in _impls(args.impl)]
    if args.json:
        print(json.dumps(out, indent=2))
    for o in out:
        print(f"{o['impl']} {o['spec']} k={o['kmer']} b={o['batch']}: bare loop {o['bare_median_s'] * 1e3:.3f} ms, "
              f"harness {o['harness_median_s'] * 1e3:.3f} ms per step, ratio {o['ratio']:.3f} "
              f"(paired 95% CI {o['ratio_ci95'][0]:.3f}-{o['ratio_ci95'][1]:.3f} over {o['repeats']} repeats; "
              f"bare loop CV across processes {o['bare_cv'] or 0:.0%})", file=sys.stderr)
    return 0 if all(abs(o["ratio"] - 1) <= args.tolerance for o in out) else 1


def cmd_baseline(args: argparse.Namespace) -> int:
    """The harness's cell against each framework's textbook loop (``bench/baselines``)."""
    from bench.overhead import BaselineError, measure_baseline

    spec = resolve_spec(args.spec, kmer=args.kmer)
    impls = _impls(args.impl)
    from bench.baselines import BASELINES

    unknown = [i for i in impls if i not in BASELINES]
    if unknown:
        raise UsageError(f"no textbook baseline for {', '.join(unknown)}; baselines exist for {', '.join(BASELINES)}")
    from bench.baselines.common import UnsupportedSpec, check_output

    try:
        check_output(spec)
    except UnsupportedSpec as exc:
        raise UsageError(f"--spec {args.spec}: {exc}") from None
    out = []
    try:
        for impl in impls:
            out.append(measure_baseline(impl, spec, args.kmer, args.batch, args.steps, args.repeats))
    except BaselineError as exc:
        print(f"vaebench: baseline: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2))
    for o in out:
        ci, dci = o["step_ratio_ci95"], o["device_step_ratio_ci95"]
        print(f"{o['impl']} vs {o['baseline']} ({o['spec']} k={o['kmer']} b={o['batch']}, {o['repeats']} repeats, "
              f"harness loop {o['harness_train_loop']}): baseline {o['baseline_median_s'] * 1e3:.3f} ms; "
              f"step {o['step_median_s'] * 1e3:.3f} ms, ratio {o['step_ratio']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}); "
              f"device_step {o['device_step_median_s'] * 1e3:.3f} ms, ratio {o['device_step_ratio']:.3f} "
              f"(95% CI {dci[0]:.3f}-{dci[1]:.3f}); trainable parameters {o['params']['baseline']:,} "
              f"{'= the spec' if o['params']['equal'] else '!= the spec or the harness: ' + str(o['params'])}",
              file=sys.stderr)
    slow = [o["impl"] for o in out if max(o["step_ratio"], o["device_step_ratio"]) > args.tolerance]
    if slow:
        print(f"vaebench: baseline: harness step time above {args.tolerance:.2f}x the textbook loop for "
              f"{', '.join(slow)}", file=sys.stderr)
    return 1 if slow or not all(o["params"]["equal"] for o in out) else 0


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "baseline": cmd_baseline,
    "overhead": cmd_overhead,
    "matrix": cmd_matrix,
    "report": cmd_report,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "preflight": cmd_preflight,
    "probe-int32": cmd_probe_int32,
    "params": cmd_params,
    "parity": cmd_parity,
    "curves": cmd_curves,
    "run": cmd_run,
    "scenarios": cmd_scenarios,
    FIT_MEMORY: cmd_fit_memory,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one line
        return int(exc.code or 0)
    try:
        return VERBS[args.verb](args)
    except (SpecError, DataError, UsageError, ScenarioError, StoreError) as exc:
        print(f"vaebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaebench: interrupted; results written so far are kept (use --resume)", file=sys.stderr)
        return 130
    finally:
        while _LOCKED:
            _LOCKED.pop().unlock()
