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

from harness.adapter import BUILTIN
from harness.data import DataError
from harness.presets import PRESETS, resolve_spec
from harness.scenarios import ScenarioError
from harness.spec import SpecError

DEFAULT_IMPLS = ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]


class UsageError(ValueError):
    """A flag the user can fix; printed as one line."""


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def kmer_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kmer takes a positive integer such as 7, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--kmer must be at least 1, got {value}")
    return value


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
    from harness.parity import check_params

    specs = [resolve_spec(name, kmer=args.kmer) for name in _specs(args.spec, list(PRESETS))]
    reports = check_params(specs, _impls(args.impl))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_params

        print_params(reports, args.kmer)
    return 0 if all(r.equal for r in reports) else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from harness.parity import check_parity

    specs = [(resolve_spec(name, kmer=args.kmer), args.kmer)
             for name in _specs(args.spec, ["dense", "conv-final", "conv-revised"])]
    reports = check_parity(specs, _impls(args.impl), batch=args.batch)
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_parity

        print_parity(reports)
    return 0 if all(r.passed for r in reports) else 1


SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def size_arg(text: str) -> int:
    """``1MiB``, ``64KiB``, ``24GB`` or plain bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write it like 1MiB, 64KiB or 24GB")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2).lower()])


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in split_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


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
    from harness.spec import canonical_kmer_count

    arr = open_npy(args.data, args.columns)
    expected = canonical_kmer_count(args.kmer)
    if arr.shape[1] != expected:
        raise DataError(f"data file {args.data} has {arr.shape[1]} columns but k={args.kmer} has {expected} "
                        "canonical k-mers; pick the block with --columns A:B")
    validate_file(arr, f"data file {args.data}")


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from harness.runner import plan_cells, run_matrix

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
        from harness.scenarios import check_scenario

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
        from harness.preflight import preflight_cell
    except ImportError:
        return None
    return lambda cell: preflight_cell(cell, device_memory=getattr(args, "device_memory", None))


def cmd_preflight(args: argparse.Namespace) -> int:
    from harness.preflight import preflight

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
    from harness.store import machine_fingerprint
    from harness.sweep import sweep_impl

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
    from harness.matrix import CPU_BATCHES, plan_default
    from harness.preflight import detect_device_memory, preflight_cell
    from harness.runner import plan_cells, run_matrix

    device = "cpu" if args.cpu else ("gpu" if args.gpu else detect_device_memory()[0])
    plan = plan_default(args.kmer, device, budget_s=args.budget_minutes * 60 if args.budget_minutes else None,
                        impls=_impls(args.impl) if args.impl else None,
                        specs=_specs(args.spec, []) or None, batches=args.batch)
    for name, reason in plan.invalid:
        print(f"skipped preset {name}: {reason}", file=sys.stderr)
    for impl, reason in plan.omitted_impls:
        print(f"omitted {impl}: {reason}", file=sys.stderr)
    cells = []
    for spec, batches in plan.specs:
        cells += plan_cells(plan.impls, [spec.with_settings(tf32=args.tf32)], args.kmer, batches, args.repeats,
                            steps=args.steps, timeout_s=args.timeout)
    verdicts = {}
    for spec, reason in plan.too_slow:  # listed as skipped rows: memory first if preflight says so, else time
        batch = CPU_BATCHES.get(spec.name, [8])[0]
        slow = plan_cells(plan.impls, [spec], args.kmer, [batch], 1, steps=args.steps, timeout_s=args.timeout)
        verdict = preflight_cell(slow[0], device_memory=args.device_memory, device=device)
        verdicts[(spec.name, batch)] = verdict if verdict.get("skip") else {**verdict, "skip": True, "reason": reason}
        cells += slow
    for c in cells:
        if (c.spec.name, c.batch) not in verdicts:
            verdicts[(c.spec.name, c.batch)] = preflight_cell(c, device_memory=args.device_memory, device=device)
    runnable = [c for c in cells if not verdicts[(c.spec.name, c.batch)].get("skip")]
    if plan.budget_s:
        for c in cells:
            c.timeout_s = min(c.timeout_s, max(180.0, 8 * plan.budget_s / max(1, len(runnable))))
    store = _store(args)
    print(f"matrix {store.run_id} on {device}: {len(cells)} cells ({len(runnable)} runnable)"
          + (f", {plan.budget_s:.0f} s for all of them" if plan.budget_s else "") + f" -> {store.path}",
          file=sys.stderr)
    try:
        run_matrix(cells, store, resume=args.resume, preflight=lambda c: verdicts[(c.spec.name, c.batch)],
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
    from reports.build import build_report, load_rows

    sources = args.results or [args.results_dir]
    rows = load_rows(sources, results_dir=args.results_dir)
    if not rows:
        raise UsageError(f"no results found in {', '.join(sources)}; run python -m bench run first")
    path = build_report(sources, out_root=args.out, run_id=args.run_id, params_check=params_from_rows(rows))
    print(f"report: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from reports.build import load_rows
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
}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the user needs only the error line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vaebench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("params", help="trainable and non-trainable counts per impl, and whether they agree")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: all presets)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("parity", help="same weights in every impl: compare outputs, loss, gradients, one Adam step")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--spec", help="preset name(s) or spec file(s) (default: dense,conv-final,conv-revised)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--batch", type=positive_int, default=16)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("preflight", help="every tensor's size, int32 overflow flags and a memory estimate")
    p.add_argument("--spec", required=True)
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--batch", type=positive_int, required=True)
    p.add_argument("--eval-batch", type=positive_int, help="batch of a validation predict() call, checked too")
    p.add_argument("--device-memory", type=size_arg, help="device memory to check against (default: detected)")
    p.add_argument("--gpu", action="store_true", help="judge as for a CUDA device (int32 overflow stops the cell)")
    p.add_argument("--flags-only", action="store_true", help="list only the tensors that overflow")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("sweep", help="largest batch each impl can train: doubling, then bisection")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--start", type=positive_int, default=64, help="first batch probed")
    p.add_argument("--max-batch", type=positive_int, default=16384, help="largest batch probed")
    p.add_argument("--timeout", type=positive_float, default=300.0, help="seconds per probe")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--memory-limit", type=size_arg, help="stop a probe whose RSS passes SIZE (host OOM)")
    p.add_argument("--device-memory", type=size_arg, help="device memory for preflight (default: detected)")
    p.add_argument("--no-preflight", action="store_true", help="probe even batches preflight says cannot fit")
    p.add_argument("--results", default="results")
    p.add_argument("--run-id")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("matrix", help="the default matrix for this device, then the report (nox -s bench)")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--impl", help="override the impls")
    p.add_argument("--spec", help="override the presets")
    p.add_argument("--batch", type=int_list, help="override the batch sizes")
    p.add_argument("--steps", type=positive_int, default=200, help="steady-state steps per cell (a time budget may cut them)")
    p.add_argument("--repeats", type=positive_int, default=1)
    p.add_argument("--budget-minutes", type=positive_float, help="time for all cells (default: 7 on CPU, none on GPU)")
    p.add_argument("--timeout", type=positive_float, default=900.0)
    p.add_argument("--device-memory", type=size_arg)
    p.add_argument("--cpu", action="store_true", help="plan for the CPU even if a GPU is present")
    p.add_argument("--gpu", action="store_true", help="plan the full GPU matrix")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--results", default="results")
    p.add_argument("--run-id")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default="reports/out", help="where reports are written")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("report", help="build a report from stored results")
    p.add_argument("results", nargs="*", help="result files, directories or run ids (default: the results dir)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--run-id", help="name of the report folder")
    p.add_argument("--out", default="reports/out")

    p = sub.add_parser("compare", help="step-time and memory ratios between two runs, with significance")
    p.add_argument("run_a", help="baseline: a results file or run id")
    p.add_argument("run_b", help="candidate: a results file or run id")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--threshold", type=float, default=0.05, help="slowdown that counts as a regression (0.05 = 5%%)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a regression is flagged (for CI)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("overhead", help="benchmark: the harness's reported step time against a bare loop")
    p.add_argument("--impl", default="torch")
    p.add_argument("--spec", default="dense")
    p.add_argument("--kmer", type=kmer_arg, default=5)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=200)
    p.add_argument("--repeats", type=positive_int, default=3)
    p.add_argument("--tolerance", type=float, default=0.05, help="exit 1 if any ratio is further than this from 1")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("run", help="measure a matrix of cells (impl x spec x batch x repeat), each in its own worker")
    add_run_arguments(p)
    return parser


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    from harness.store import DEFAULT_RESULTS_DIR

    p.add_argument("--impl", help=f"comma-separated impls or path/to/file.py:Class (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: dense)")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--batch", type=int_list, default=[64], help="comma-separated batch sizes")
    p.add_argument("--steps", type=positive_int, default=200, help="steady-state steps per cell (after compile and warm-up)")
    p.add_argument("--repeats", type=positive_int, default=1, help="repeats per cell, interleaved across impls")
    p.add_argument("--data", help="a .npy file (rows x features), streamed as a memmap; default: synthetic profiles")
    p.add_argument("--columns", help="A:B column block of --data, e.g. the 7-mer block of a multi-k matrix")
    p.add_argument("--results", default=str(DEFAULT_RESULTS_DIR), help="results directory (JSON Lines)")
    p.add_argument("--run-id", help="name of the run (default: timestamp)")
    p.add_argument("--resume", action="store_true", help="skip cells already in the run (latest run unless --run-id)")
    p.add_argument("--timeout", type=positive_float, default=900.0, help="seconds per cell")
    p.add_argument("--inject-leak", type=size_arg, help="positive control: keep SIZE bytes per step, e.g. 1MiB")
    p.add_argument("--scenario", help="a named leak anti-pattern (see python -m bench scenarios)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (off by default, recorded in every row)")
    p.add_argument("--heap", choices=["auto", "on", "off"], default="auto", help="tracemalloc heap tracking")
    p.add_argument("--memory-limit", type=size_arg, help="stop a worker whose RSS passes SIZE (host OOM row)")
    p.add_argument("--device-memory", type=size_arg, help="device memory for preflight (default: detected)")
    p.add_argument("--no-preflight", action="store_true", help="run cells even when preflight says they cannot fit")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the new rows as JSON")


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
