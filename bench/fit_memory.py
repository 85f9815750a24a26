"""``python -m bench fit-memory``: fit the per-impl memory terms from measured cells.

    python -m bench fit-memory --results reports/reference/cpu/k7-2core-cpu --device cpu \\
        --out harness/diagnose/memory_factors.json

reads result rows (a JSONL file, a directory of them, or a run id in ``--results-dir``), fits
``f_state * state + f_activation * activations + f_program * ops + constant`` per impl and device kind
(:mod:`harness.diagnose.memory_fit`; where the rows carry their workers' runtime footprints the constant is
those, and each spec is held out once), prints each fit with its cells' estimate / measured ratios,
and with ``--out`` merges the fits into that factors file (replacing earlier fits of the same impl
and device kind, keeping the others). Bad input is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

VERB = "fit-memory"


def add_fit_memory_parser(sub: Any) -> None:
    p = sub.add_parser(VERB, help="fit the per-impl memory estimate's factors from measured cells")
    p.add_argument("--results", required=True, nargs="+",
                   help="result rows: JSONL file(s), directories of them, or run ids in --results-dir")
    p.add_argument("--results-dir", default="results", help="where run ids are looked up (default: results)")
    p.add_argument("--run", help="only the rows of this run id")
    p.add_argument("--device", choices=["cpu", "gpu"], help="only rows measured on this kind of device")
    p.add_argument("--impl", help="only these impls, comma-separated")
    p.add_argument("--ridge", type=float, default=None,
                   help="pull toward the framework-free prior (1, 1, 0); default: harness.diagnose.memory_fit.RIDGE")
    p.add_argument("--out", help="merge the fits into this factors file (e.g. harness/diagnose/memory_factors.json)")
    p.add_argument("--json", action="store_true", help="print the fits as JSON")


def _fail(msg: str) -> int:
    print(f"vaebench: error: {msg}", file=sys.stderr)
    return 2


def _command(args: argparse.Namespace) -> str:
    parts = ["python", "-m", "bench", VERB, "--results", *args.results]
    for flag in ("results_dir", "run", "device", "impl", "ridge", "out"):
        v = getattr(args, flag, None)
        if v is not None and not (flag == "results_dir" and v == "results"):
            parts += [f"--{flag.replace('_', '-')}", str(v)]
    return shlex.join(parts)


def cmd_fit_memory(args: argparse.Namespace) -> int:
    from harness.diagnose.memory_fit import RIDGE, FitError, cells_from_rows, fit_cells, merge_factors, write_factors
    from harness.store import load_rows

    ridge = RIDGE if args.ridge is None else args.ridge
    if not ridge >= 0:
        return _fail(f"--ridge must be 0 or more, not {args.ridge}")
    try:
        rows = load_rows(args.results, args.results_dir)
    except (FileNotFoundError, ValueError, OSError) as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else repr(exc))
    impls = {s.strip() for s in args.impl.split(",") if s.strip()} if args.impl else None
    if impls:
        rows = [r for r in rows if r.get("impl") in impls]
    cells, skipped = cells_from_rows(rows, run_id=args.run, device=args.device)
    try:
        fits = fit_cells(cells, source=" ".join(args.results), ridge=ridge)
    except FitError as exc:
        where = f" (run {args.run})" if args.run else ""
        return _fail(f"{exc}; {len(rows)} row(s) read from {' '.join(args.results)}{where}, {len(skipped)} left out")
    if args.json:
        print(json.dumps(fits, indent=1))
    else:
        _print(fits, skipped)
    if args.out:
        from pathlib import Path

        path = Path(args.out)
        try:
            existing = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError) as exc:
            return _fail(f"cannot read the factors file {path}: {exc}")
        # an unrelated JSON file there was merged into and overwritten without a word (issue 27)
        if not isinstance(existing, dict) or (existing and not isinstance(existing.get("fits"), list)):
            return _fail(f"{path} is not a factors file (a JSON object with 'fits'); it is left as it is: pick "
                         "another --out")
        try:
            write_factors(path, merge_factors(existing, fits, _command(args)))
        except OSError as exc:
            return _fail(f"cannot write {path}: {exc.strerror or exc}")
        print(f"factors: {path}")
    return 0


def _print(fits: list[dict[str, Any]], skipped: list[str]) -> None:
    mib = 2**20
    print(f"model: f_state * state + f_activation * activations + f_program * ops + constant ({len(fits)} fit(s))")
    for f in fits:
        how = "measured: the median runtime footprint of its workers" if f.get("constant") == "measured" else "fitted"
        print(f"{f['impl']} on {f['device']} ({f['device_name']}): f_state {f['f_state']:.3f}, "
              f"f_activation {f['f_activation']:.3f}, f_program {(f.get('f_program') or 0) / mib:.2f} MiB an op, "
              f"constant {f['constant_bytes'] / mib:.1f} MiB ({how})")
        held = f.get("held_out")
        if held:
            print(f"  held out by spec ({held['specs']} specs, {held['cells']} cells): estimate / measured "
                  f"{held['ratio_low']:.2f} to {held['ratio_high']:.2f}, {held['within_band']} of {held['cells']} "
                  f"within {held['band'][0]:.2f}-{held['band'][1]:.2f}")
        for c in f["cells"]:
            loo = f", leave-one-out {c['loo_ratio']:.2f}" if "loo_ratio" in c else ""
            loo += f", held out {c['held_out_ratio']:.2f}" if "held_out_ratio" in c else ""
            print(f"  {c['spec']} k={c['kmer']} b={c['batch']}: estimate {c['estimate_bytes'] / mib:.1f} MiB / "
                  f"measured {c['measured_bytes'] / mib:.1f} MiB = {c['ratio']:.2f}{loo} ({c['measured_source']})")
    if skipped:
        print(f"{len(skipped)} row(s) left out: " + "; ".join(skipped[:5]) + (" …" if len(skipped) > 5 else ""))
