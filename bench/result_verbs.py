"""The verbs that read stored results: ``report`` and ``compare``, and the loader's one-line errors."""

from __future__ import annotations

import argparse
import json
import sys

from bench.parser import UsageError


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
    from reports.compare import cells_summary, compare_runs, print_comparison, write_comparison

    a = _load([args.run_a], args.results_dir)
    b = _load([args.run_b], args.results_dir)
    for name, rows in ((args.run_a, a), (args.run_b, b)):
        if not rows:
            raise UsageError(f"run {name!r} has no rows; pass a results file, directory or run id in {args.results_dir}")
    from harness.placement import devices_differ

    differ = devices_differ(args.run_a, a, args.run_b, b)
    if differ:  # rows of a cluster's nodes, or two machines: say so before any ratio
        print(f"vaebench: {differ}", file=sys.stderr)
    comparisons = compare_runs(a, b, threshold=args.threshold, alpha=args.alpha)
    if not comparisons:
        raise UsageError(f"{args.run_a} and {args.run_b} have no cell in common (impl, spec, batch and scenario): "
                         f"{args.run_a} has {cells_summary(a)}; {args.run_b} has {cells_summary(b)}")
    if args.json and args.format not in ("table", "json"):
        raise UsageError(f"--json is --format json; pass one of --json and --format {args.format}")
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(json.dumps(comparisons, indent=2, default=str))
    elif fmt in ("csv", "md"):
        write_comparison(comparisons, fmt, sys.stdout)
    else:
        from bench.render import console  # full width when stdout is not a terminal: `compare A B > f.txt`

        print_comparison(comparisons, console=console, title=f"{args.run_b} against {args.run_a}")
    regressions = [c for c in comparisons if c.get("regression") or c.get("new_failure")]
    if regressions and args.fail_on_regression:
        print(f"vaebench: {len(regressions)} regression(s)", file=sys.stderr)
        return 1
    return 0
