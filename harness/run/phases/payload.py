"""The worker's result for one cell, written out from the phases' parts.

Its keys are the stored row's (``harness.row`` types them; the reports and the
committed references read them): a key renamed here is a row that no longer
reads. ``energy`` is the one key added with the trackers (``harness.measure.energy``).
"""

from __future__ import annotations

import os
from typing import Any

from harness.adapter import row_label
from harness.measure.peak import flop_fields
from harness.measure.probes import frameworks_loaded
from harness.run.phases.context import CellContext
from harness.run.phases.parts import CellParts
from harness.spec.flops import step_flops

STANDIN_NOTE = ("peak RSS (VmHWM) over {n} training steps on a trimmed heap, less the framework's import "
                "footprint and file-backed pages, stands in for device memory on CPU; the compile step's own "
                "peak is compile_peak_rss_bytes")


def cell_payload(ctx: CellContext, parts: CellParts) -> dict[str, Any]:
    """The result dict ``harness.run.worker`` writes and ``harness.run.runner`` merges into the row."""
    cls, model, p = ctx.cls, ctx.model, parts
    counts, expected = p.build.counts, p.build.expected
    step_s, device_step_s = p.timing.step["median_s"], p.timing.device_step["median_s"]
    return {
        "row": row_label(cls, ctx.task.impl),
        "versions": cls.versions(),
        "device_kind": cls.device_kind(),
        "syncs_every_step": bool(getattr(model, "syncs_every_step", False)),
        "frameworks_loaded": frameworks_loaded(),
        "pid": os.getpid(),
        "import_s": p.build.import_s,
        "build_s": p.build.build_s,
        "runtime_s": p.build.runtime_s,
        "compile_s": p.compiled.seconds,
        "compile_cached": p.compiled.cached,
        "warmup_step_times_s": p.warmup.times,
        "steady_windows_dropped": p.timing.dropped,
        "train_loop": model.loop,
        "loop_details": model.loop_details(),
        "stages_input": bool(getattr(cls, "stages_input", False)),
        "final_loss": p.final_loss,
        "steps_measured": p.plan.steps,
        "steps_requested": p.plan.requested,
        "time_budget_s": p.plan.budget_s,
        "param_counts": {"trainable": counts.trainable, "non_trainable": counts.non_trainable},
        "param_counts_expected": {"trainable": expected.trainable, "non_trainable": expected.non_trainable},
        "step_stats": p.timing.step,
        "device_step_stats": p.timing.device_step,
        "device_step_source": p.timing.device_step_source,
        "input_bound_ratio": step_s / device_step_s,
        # FLOPs of one step from the spec, and the achieved rates; MFU needs the run's peak (runner)
        **flop_fields(step_flops(ctx.spec, ctx.batch), step_s, device_step_s),
        "memory": _memory(p),
        "host": _host(ctx, p),
        "leak": p.leak.fields,
        "counters": ctx.counters.result(),
        "energy": p.steady.energy.to_dict(),
    }


def _memory(p: CellParts) -> dict[str, Any]:
    device, standin = p.figures.device, p.figures.standin
    return {
        "device": device,
        "device_source": "allocator" if device else None,
        "nvml_bytes": p.figures.nvml,
        "peak_rss_bytes": p.memory.peak_rss,
        "import_anon_bytes": p.build.import_anon,
        "harness_anon_bytes": p.build.harness_anon,
        "runtime_anon_bytes": p.build.runtime_anon,
        # the framework's footprint past its import: the memory estimate's measured constant
        "runtime_footprint_bytes": None if p.build.runtime_anon is None else max(
            0, p.build.runtime_anon - p.build.import_anon),
        "runtime_warm_up": {"seconds": round(p.build.runtime_s, 3), "error": p.build.runtime_error},
        "training_peak_rss_bytes": standin.training_bytes,
        "compile_peak_rss_bytes": standin.compile_bytes,
        "memory_phase_steps": p.memory.steps,
        "heap_trimmed": p.memory.heap_trimmed,
        "peak_rss_restarted": p.memory.peak_restarted,
        "cpu_standin": None if device else STANDIN_NOTE.format(n=p.memory.steps),
        "peak_bytes": device.get("peak_bytes") if device else standin.training_bytes,
        **({} if device else standin.fields()),
    }


def _host(ctx: CellContext, p: CellParts) -> dict[str, Any]:
    rss, anon, start = ctx.rss, p.steady.anon, p.steady.rss_from
    return {
        "rss_anon": rss.anon,
        "rss_file": rss.file,
        "steady_from": start,
        "file_growth_bytes": (rss.file[-1] - rss.file[start]) if rss.file else 0,
        "anon_growth_bytes": (anon[-1] - anon[0]) if anon else 0,
        "heap_tracking": p.heap.note,
        "heap_bytes": p.heap.bytes,
        "heap_phase_anon_bytes": p.heap.anon,
        "heap_growth_bytes": p.leak.heap_growth,
    }
