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

from bench.parser import DEFAULT_IMPLS, UsageError, build_parser, split_list
from harness.adapter import BUILTIN
from harness.data import DataError
from harness.diagnose.scenarios import ScenarioError
from harness.spec.presets import PRESETS, resolve_spec
from harness.spec.schema import SpecError


def _impls(text: str | None) -> list[str]:
    impls = split_list(text) if text else list(DEFAULT_IMPLS)
    out = []
    for impl in impls:
        if impl not in BUILTIN and ":" not in impl:
            raise UsageError(f"unknown impl {impl!r}; built-in impls are {', '.join(BUILTIN)}, "
                             "or pass path/to/file.py:Class or module:attr")
        target, _, attr = impl.rpartition(":")
        if target.endswith(".py"):  # workers start in the repo root: hand them an absolute path
            from pathlib import Path

            impl = f"{Path(target).resolve()}:{attr}"
        out.append(impl)
    return out


def _specs(text: str | None, default: list[str]) -> list[str]:
    return split_list(text) if text else default


# ------------------------------------------------------------------------- verbs


def cmd_params(args: argparse.Namespace) -> int:
    from harness.run.parity import check_params

    specs = [resolve_spec(name, kmer=args.kmer) for name in _specs(args.spec, list(PRESETS))]
    reports = check_params(specs, _impls(args.impl))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_params

        print_params(reports, args.kmer)
    return 0 if all(r.equal for r in reports) else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from harness.run.parity import check_parity

    specs = [(resolve_spec(name, kmer=args.kmer), args.kmer)
             for name in _specs(args.spec, ["dense", "conv-final", "conv-revised"])]
    reports = check_parity(specs, _impls(args.impl), batch=args.batch)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_parity

        print_parity(reports)
    return 0 if all(r.passed for r in reports) else 1


def _store(args: argparse.Namespace):
    from harness.store import ResultStore, new_run_id

    if args.resume:
        if args.run_id:
            return ResultStore(args.results, args.run_id)
        latest = ResultStore.latest(args.results)
        if latest is None:
            raise UsageError(f"--resume: no earlier run in {args.results}; run without --resume first")
        return latest
    return ResultStore(args.results, args.run_id or new_run_id())


def _check_data(args: argparse.Namespace) -> None:
    """Fail on a bad data file before any cell starts, not in the middle of the matrix."""
    if not getattr(args, "data", None):
        return
    from harness.data import open_npy, validate_file
    from harness.spec.schema import canonical_kmer_count

    arr = open_npy(args.data, args.columns)
    expected = canonical_kmer_count(args.kmer)
    if arr.shape[1] != expected:
        raise DataError(f"data file {args.data} has {arr.shape[1]} columns but k={args.kmer} has {expected} "
                        "canonical k-mers; pick the block with --columns A:B")
    validate_file(arr, f"data file {args.data}")


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.run.runner import plan_cells, run_matrix

    if args.data:
        args.data = str(Path(args.data).resolve())  # workers start in the repo root
    impls = _impls(args.impl)
    specs = [resolve_spec(s, kmer=args.kmer).with_settings(tf32=args.tf32) for s in _specs(args.spec, ["dense"])]
    _check_data(args)
    store = _store(args)
    cells = plan_cells(impls, specs, args.kmer, args.batch, args.repeats, steps=args.steps,
                       scenario=args.scenario, inject_leak_bytes=args.inject_leak or 0, data=args.data,
                       columns=args.columns, timeout_s=args.timeout, heap=args.heap)
    if args.scenario:
        from harness.diagnose.scenarios import check_scenario

        for cell in cells:
            check_scenario(args.scenario, cell.impl)
    preflight = None if args.no_preflight else _preflight_hook(args)
    print(f"run {store.run_id}: {len(cells)} cells -> {store.path}", file=sys.stderr)
    try:
        rows = run_matrix(cells, store, resume=args.resume, preflight=preflight, progress=not args.no_progress,
                          memory_limit_bytes=args.memory_limit)
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; {len(store.rows())} finished rows kept in {store.path}; "
              f"continue with --resume --run-id {store.run_id}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        from bench.render import print_rows

        print_rows(store.rows())
    return 0


def _preflight_hook(args: argparse.Namespace):
    try:
        from harness.diagnose.preflight import preflight_cell
    except ImportError:
        return None
    return lambda cell: preflight_cell(cell, device_memory=getattr(args, "device_memory", None))


def cmd_preflight(args: argparse.Namespace) -> int:
    from harness.diagnose.preflight import preflight

    spec = resolve_spec(args.spec, kmer=args.kmer)
    device = "gpu" if args.gpu else None
    rep = preflight(spec, args.batch, args.eval_batch, device_memory=args.device_memory, device=device,
                    int32_applies=True if args.gpu else None)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        from bench.render import print_preflight

        print_preflight(rep, show_all=not args.flags_only)
    if not rep.ok:
        print(f"vaebench: preflight: cannot run {spec.name} at batch {args.batch}: {rep.reasons[0]}", file=sys.stderr)
        return 3
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from harness.measure.fingerprint import machine_fingerprint
    from harness.run.sweep import sweep_impl

    impls = _impls(args.impl)
    specs = [resolve_spec(s, kmer=args.kmer).with_settings(tf32=args.tf32) for s in _specs(args.spec, ["dense"])]
    store = _store(args)
    preflight = None if args.no_preflight else _preflight_hook(args)
    print(f"sweep {store.run_id} -> {store.path}", file=sys.stderr)
    results = []
    try:
        for spec in specs:
            fingerprint = machine_fingerprint(spec.settings)
            for impl in impls:
                def show(batch: int, row: dict, impl=impl, spec=spec) -> None:
                    outcome = "ok" if row["status"] == "ok" else row["failure_kind"]
                    print(f"  {impl} {spec.name} batch {batch}: {outcome}", file=sys.stderr)

                results.append(sweep_impl(impl, spec, args.kmer, store, fingerprint, start=args.start,
                                          max_batch=args.max_batch, timeout_s=args.timeout, preflight=preflight,
                                          memory_limit_bytes=args.memory_limit, on_probe=show))
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; probes so far are kept in {store.path}", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        from bench.render import print_sweep

        print_sweep(results)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    """The main job: default matrix, then the report."""
    from harness.diagnose.preflight import detect_device_memory
    from harness.run.matrix import matrix_cells, plan_default
    from harness.run.runner import run_matrix

    device = "cpu" if args.cpu else ("gpu" if args.gpu else detect_device_memory()[0])
    plan = plan_default(args.kmer, device, budget_s=args.budget_minutes * 60 if args.budget_minutes else None,
                        impls=_impls(args.impl) if args.impl else None,
                        specs=_specs(args.spec, []) or None, batches=args.batch)
    for name, reason in plan.invalid:
        print(f"skipped preset {name}: {reason}", file=sys.stderr)
    for impl, reason in plan.omitted_impls:
        print(f"omitted {impl}: {reason}", file=sys.stderr)
    planned = matrix_cells(plan, args.kmer, steps=args.steps, repeats=args.repeats, timeout_s=args.timeout,
                           tf32=args.tf32, device_memory=args.device_memory)
    cells, runnable = planned.cells, planned.runnable
    store = _store(args)
    print(f"matrix {store.run_id} on {device}: {len(cells)} cells ({len(runnable)} runnable)"
          + (f", {plan.budget_s:.0f} s for all of them" if plan.budget_s else "") + f" -> {store.path}",
          file=sys.stderr)
    try:
        run_matrix(cells, store, resume=args.resume, preflight=planned.preflight,
                   progress=not args.no_progress, budget_s=plan.budget_s, runnable={c.key for c in runnable})
    except KeyboardInterrupt:
        print(f"vaebench: interrupted; finished rows kept in {store.path}; continue with "
              f"nox -s bench -- --kmer {args.kmer} --resume --run-id {store.run_id}", file=sys.stderr)
        return 130
    from reports.build import build_report

    rows = store.rows()
    path = build_report([store.path], out_root=args.out, run_id=store.run_id, params_check=params_from_rows(rows))
    from bench.render import print_rows

    print_rows([r for r in rows if not r.get("sweep") and not r.get("scenario")])
    print(f"report: {path}")
    return 0


def params_from_rows(rows: list[dict]) -> dict:
    """The parity-of-counts check from what each cell's worker read off its own model."""
    out: dict[str, dict] = {}
    for r in rows:
        if r.get("param_counts"):
            entry = out.setdefault(r["spec_name"], {"expected": r["param_counts_expected"]})
            entry[r["row"]] = r["param_counts"]
    return out


def cmd_report(args: argparse.Namespace) -> int:
    from harness.store import load_rows
    from reports.build import build_report

    sources = args.results or [args.results_dir]
    rows = load_rows(sources, results_dir=args.results_dir)
    if not rows:
        raise UsageError(f"no results found in {', '.join(sources)}; run python -m bench run first")
    path = build_report(sources, out_root=args.out, run_id=args.run_id, params_check=params_from_rows(rows))
    print(f"report: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from harness.store import load_rows
    from reports.compare import compare_runs, print_comparison

    a = load_rows([args.run_a], results_dir=args.results_dir)
    b = load_rows([args.run_b], results_dir=args.results_dir)
    for name, rows in ((args.run_a, a), (args.run_b, b)):
        if not rows:
            raise UsageError(f"run {name!r} has no rows; pass a results file, directory or run id in {args.results_dir}")
    comparisons = compare_runs(a, b, threshold=args.threshold, alpha=args.alpha)
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


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "overhead": cmd_overhead,
    "matrix": cmd_matrix,
    "report": cmd_report,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "preflight": cmd_preflight,
    "params": cmd_params,
    "parity": cmd_parity,
    "run": cmd_run,
    "scenarios": cmd_scenarios,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one line
        return int(exc.code or 0)
    try:
        return VERBS[args.verb](args)
    except (SpecError, DataError, UsageError, ScenarioError) as exc:
        print(f"vaebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaebench: interrupted; results written so far are kept (use --resume)", file=sys.stderr)
        return 130
