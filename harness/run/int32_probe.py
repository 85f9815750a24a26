"""``bench probe-int32``: what each op of each impl does past 2^31 elements, measured.

The parent never imports a framework. For each op it starts a worker
(``harness.run.launch``) that runs that op's probes in turn: forward, then
forward and backward, on a tensor just below the boundary and one just past it
(``harness.measure.int32_check``). A probe that raises is recorded and the next
runs in the same worker; one that kills the worker (an abort, a segfault, the
OOM killer) is recorded from the exit signal and the stderr tail, and a fresh
worker takes the op's remaining probes. So an abort costs one probe, not a run.

Each result is a row (framework and CUDA versions, device) appended to
``<results>/int32-probes.jsonl``, the cache preflight reads
(``harness.diagnose.int32``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.adapter import BUILTIN, is_installed, not_installed_message
from harness.diagnose.failures import crash_detail, says_out_of_memory
from harness.diagnose.int32 import IMPL_FRAMEWORK, PROBE_CACHE
from harness.impls_registry import RecordField
from harness.measure.int32_check import BOUNDARY_ENV, OPS, PASSES, SIZES, boundary, geometry, probe_bytes
from harness.run.launch import WorkerOutcome, run_worker
from harness.run.task import Int32ProbeTask
from harness.spec.schema import Settings

#: the framework code each built-in impl's probes run (its record's ``int32_probe``: a Keras row runs
#: its backend's kernels, so its backend's probes)
PROBE_MODULES = RecordField("int32_probe")
#: a CPU probe runs only where it needs less than this share of the available host RAM
HOST_SHARE = 0.6


class ProbeError(ValueError):
    """A bad impl, op or device for probe-int32; one line naming the fix."""


@dataclass
class ProbeRequest:
    impl: str
    device: str
    ops: tuple[str, ...] = OPS
    passes: tuple[str, ...] = PASSES
    timeout_s: float = 600.0


def probe_module(impl: str) -> str:
    if impl in PROBE_MODULES:
        return PROBE_MODULES[impl]
    path = Path(impl)
    if impl.endswith(".py") and path.exists():
        return str(path.resolve())
    raise ProbeError(f"unknown impl {impl!r} for probe-int32; built-in impls are {', '.join(PROBE_MODULES)}, "
                     "or pass a probe module path/to/file.py (an Ops class, see harness/measure/int32_check.py)")


def check_ops(ops: list[str]) -> tuple[str, ...]:
    bad = [o for o in ops if o not in OPS]
    if bad:
        raise ProbeError(f"unknown op {bad[0]!r}; ops are {', '.join(OPS)}")
    return tuple(ops)


def _host_available() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return None


def probe_impl(req: ProbeRequest, results_dir: str | Path | None = None,
               on_row: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every probe of ``req``: one row each, appended to the cache under ``results_dir`` (if given)."""
    module = probe_module(req.impl)
    base = {"impl": req.impl, "framework": IMPL_FRAMEWORK.get(req.impl, "plug-in"), "device": req.device,
            "boundary": boundary()}
    rows: list[dict[str, Any]] = []

    below: dict[tuple[str, str], str] = {}

    def record(row: dict[str, Any]) -> None:
        row = {**base, **row, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        row.setdefault("elements", geometry(row["op"], row["size"]).elements)
        if row["size"] == "below":
            below[(row["op"], row["pass"])] = row["behaviour"]
        else:  # a failure past the boundary is int32's only where the same probe below it ran
            row["below"] = below.get((row["op"], row["pass"]))
        rows.append(row)
        if results_dir is not None:
            path = Path(results_dir) / PROBE_CACHE
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
        if on_row:
            on_row(row)

    plan = [{"op": op, "pass": p, "size": s} for op in req.ops for p in req.passes for s in SIZES]
    if req.impl in BUILTIN and not is_installed(req.impl):
        for p in plan:
            record({**p, "behaviour": "skipped", "detail": not_installed_message(req.impl)})
        return rows
    by_op: dict[str, list[dict[str, Any]]] = {}
    for p in plan:
        reason = _skip_reason(p, req.device)
        if reason:
            record({**p, "behaviour": "skipped", "detail": reason})
        else:
            by_op.setdefault(p["op"], []).append(p)
    env: dict[str, Any] = {}
    for op_probes in by_op.values():
        _probe_op(module, req, op_probes, env, record)
    return rows


def _skip_reason(p: dict[str, Any], device: str) -> str | None:
    if device != "cpu":
        return None
    g = geometry(p["op"], p["size"])
    need, avail = probe_bytes(g, p["pass"] == "forward+backward"), _host_available()
    if avail is not None and need > HOST_SHARE * avail:
        return (f"needs about {need / 2**30:.1f} GiB of host RAM ({g.elements:,} float32 elements, with gradients "
                f"and chunks); {avail / 2**30:.1f} GiB available: run it on a GPU (--device gpu)")
    return None


def _probe_op(module: str, req: ProbeRequest, probes: list[dict[str, Any]], env: dict[str, Any], record) -> None:
    """One worker for the op's probes; a fresh one after each probe that kills its worker."""
    remaining = list(probes)
    while remaining:
        started: list[int] = []
        done: dict[int, dict[str, Any]] = {}

        def on_event(ev: dict[str, Any], started=started, done=done) -> None:
            if "environment" in ev:
                env.update(ev["environment"])
            if "probe_start" in ev:
                started.append(ev["probe_start"])
            if "probe_done" in ev:
                done[ev["probe_done"]] = ev["result"]

        task = Int32ProbeTask(module=module, device=req.device, probes=remaining)
        extra = {BOUNDARY_ENV: str(boundary())}
        if req.device == "cpu":
            extra.update({"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"})
        out = run_worker(task, req.impl, Settings(), req.timeout_s, extra_env=extra, on_event=on_event)
        for i in sorted(done):
            record(_row(done[i], env))
        killed = next((i for i in started if i not in done), None)
        if killed is not None:
            record(_row({**remaining[killed], **_dead(out, req.device)}, env))
            remaining = remaining[killed + 1:]
        elif len(done) < len(remaining):  # died before its first probe (import, no device): all the same
            dead = _dead(out, req.device)
            dead["behaviour"] = "skipped" if dead["behaviour"] in ("raises", "error") else dead["behaviour"]
            for p in remaining[len(done):]:
                record(_row({**p, **dead}, env))
            remaining = []
        else:
            remaining = []


def _row(res: dict[str, Any], env: dict[str, Any]) -> dict[str, Any]:
    """A result as a cache row: an exception whose message says out-of-memory is ``oom``."""
    row = {**res}
    if row.get("behaviour") == "raises" and says_out_of_memory(row.get("detail", "")):
        row["behaviour"] = "oom"
    g = row.pop("geometry", None)
    if g:
        row["elements"], row["shape"] = g["elements"], [g["rows"], g["length"], g["channels"]]
    return {**row, "framework_version": env.get("framework_version"), "versions": env.get("versions"),
            "cuda": env.get("cuda"), "device_name": env.get("device_name")}


def _dead(out: WorkerOutcome, device: str) -> dict[str, Any]:
    """What a worker that left no result for a probe died of: abort (signal), OOM, timeout or an error."""
    lines = out.stderr_all or out.stderr_tail
    if out.timed_out:
        return {"behaviour": "timeout", "detail": f"no result within {out.wall_s:.0f} s"}
    if out.memory_limit_hit:
        return {"behaviour": "oom", "detail": "the worker passed its host memory limit"}
    if out.result and out.result.get("status") == "error":
        return {"behaviour": "raises" if out.result.get("error_type") != "FrameworkMissing" else "skipped",
                "detail": f"{out.result.get('error_type')}: {out.result.get('message')}"}
    sig = out.signal_name
    if sig == "SIGKILL":
        return {"behaviour": "oom", "detail": "killed by SIGKILL: most likely the kernel's OOM killer"}
    if sig:
        return {"behaviour": "aborts", "signal": sig, "detail": crash_detail(lines) or sig,
                "stderr_last": next((ln.strip() for ln in reversed(lines) if ln.strip()), "")}
    return {"behaviour": "error", "detail": f"worker exited with status {out.returncode} and no result: "
                                            + (lines[-1].strip() if lines else "")}
