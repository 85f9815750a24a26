"""``python -m bench probe-int32``: run each op past 2^31 elements in each impl, and say what happened.

The work is in ``harness.run.int32_probe`` (workers, classification, the cache);
this module checks the flags and prints. Results go to ``<results>/int32-probes.jsonl``,
where ``preflight`` finds them for this framework version and device.
"""

from __future__ import annotations

import argparse
import json

from bench.parser import UsageError, split_list


def cmd_probe_int32(args: argparse.Namespace) -> int:
    from harness.run.int32_probe import ProbeError, ProbeRequest, check_ops, probe_impl, probe_module

    impls = split_list(args.impl, "--impl")
    device = args.device or _detected_device()
    if device == "gpu" and _detected_device() != "gpu":
        raise UsageError("--device gpu: no NVIDIA GPU is visible here (NVML lists none); use --device cpu")
    try:
        for impl in impls:
            probe_module(impl)
        ops = check_ops(split_list(args.ops, "--ops")) if args.ops else None
    except ProbeError as exc:
        raise UsageError(str(exc)) from None
    if args.results:  # before any probe: `--results /proc/x` was a traceback at the first write (issue 27)
        from harness.store import check_results_dir

        check_results_dir(args.results)
    rows = []
    for impl in impls:
        req = ProbeRequest(impl, device, timeout_s=args.timeout)
        if ops:
            req.ops = ops
        rows += probe_impl(req, args.results, on_row=None if args.json else _progress)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print_probes(rows, args.results)
    return 0


def _detected_device() -> str:
    from harness.measure.probes import gpu_inventory

    return "gpu" if gpu_inventory() else "cpu"


def _progress(row: dict) -> None:
    import sys

    print(f"  {row['impl']} {row['op']} {row['pass']} {row['size']}: {row['behaviour']}", file=sys.stderr)


def print_probes(rows: list[dict], results: str | None) -> None:
    """One line per impl, op and pass: the probe below the boundary, the one past it, and why."""
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    console = Console()
    style = {"ok": "green", "raises": "red", "aborts": "red", "wrong": "red", "oom": "yellow", "skipped": "dim"}
    table = Table(title="probe-int32: each op just below and just past the int32 boundary")
    for col in ("impl", "op", "pass", "below", "past", "why (past)"):
        table.add_column(col, overflow="fold")
    lines: dict[tuple, dict] = {}
    for r in rows:
        lines.setdefault((r["impl"], r["op"], r["pass"]), {})[r["size"]] = r
    for (impl, op, pass_), sizes in lines.items():
        cells = []
        for size in ("below", "past"):
            b = sizes.get(size, {}).get("behaviour", "-")
            cells.append(f"[{style.get(b, 'white')}]{b}[/]")
        why = str(sizes.get("past", {}).get("detail") or "")[:120]
        label = Path(impl).stem if impl.endswith(".py") else impl
        table.add_row(label, op, pass_.replace("forward+backward", "fwd+bwd"), *cells, why)
    console.print(table)
    if rows:
        r, past = rows[0], next((x for x in rows if x["size"] == "past" and x.get("elements")), rows[0])
        console.print(f"{r.get('framework')} {r.get('framework_version') or ''} on {r.get('device_name') or r['device']}"
                      f" (CUDA {r.get('cuda') or '-'}); boundary {r['boundary']:,} elements; "
                      f"past = {past.get('elements') or 0:,} elements")
    if results:
        console.print(f"rows appended to {results}/int32-probes.jsonl; preflight --impl reads them")
