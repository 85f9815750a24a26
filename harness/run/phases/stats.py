"""The ``stats`` phase: statistics, the leak verdict and the memory figures, from what the phases took (no steps)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from harness.diagnose.evidence import judge_steady
from harness.diagnose.leak import attribute_growth, scaled_threshold
from harness.measure.host_peak import cpu_standin_peak, weights_and_state_bytes
from harness.measure.probes import nvml_process_memory, proc_status
from harness.measure.stats import detect_warmup, summarize_steps
from harness.run.phases.context import CellContext
from harness.run.phases.leak import FLOOR_WINDOW, LEAK_JUDGED_MIN, LeakSeries
from harness.run.phases.parts import (
    BuildPart,
    CompilePart,
    DeviceStepPart,
    HeapPart,
    LeakPart,
    MemoryFigures,
    MemoryPart,
    SteadyPart,
    StepPlan,
    TimingStats,
)
from harness.run.windows import WindowTimes


def timing(ctx: CellContext, plan: StepPlan, steady: SteadyPart, device: DeviceStepPart) -> TimingStats:
    """Per-step statistics of the steady windows and of the device-step windows (or why they are the same)."""
    step_stats, dropped = _window_stats(steady.windows, plan.steps_per_window, ctx.batch)
    if device.windows is not None:
        device_stats, _ = _window_stats(device.windows, plan.steps_per_window, ctx.batch)
        source = "batches staged on the device before each window's clock started"
    else:
        device_stats, source = step_stats, _device_step_same_reason(ctx)
    return TimingStats(step=step_stats, dropped=dropped, device_step=device_stats, device_step_source=source)


def _window_stats(w: WindowTimes, spw: int, batch: int) -> tuple[dict[str, Any], int]:
    # leading windows still slow by the warm-up rule are dropped (the sentinel stands
    # for the compile step the rule always counts as warm-up)
    dropped = max(0, detect_warmup([math.inf, *w.times]) - 1) if len(w.times) >= 8 else 0
    timed = w.times[dropped:]
    elapsed, n = w.last_window
    stats = summarize_steps(timed or [elapsed], spw if timed else n, batch)
    return {**stats.to_dict(), "window_times_s": [t / spw for t in timed], "feed_fallbacks": w.fallbacks}, dropped


def _device_step_same_reason(ctx: CellContext) -> str:
    cls = ctx.cls
    if cls.device_kind() == "cpu":
        return "same as step: on a CPU a batch in host memory is already in device memory"
    if not getattr(cls, "stages_input", False):
        return "same as step: this adapter does not stage batches on the device (no to_device)"
    return "same as step: a scenario replaces the train step"


def leak(ctx: CellContext, steady: SteadyPart, series: LeakSeries, heap: HeapPart) -> LeakPart:
    """The leak phase's verdict on all the evidence, with a threshold scaled to the batch
    (``harness.diagnose.evidence``), and the likeliest cause of any growth. The compile counters
    are read over the steady window, the RSS over the leak phase's clean samples."""
    counters = ctx.counters.result()
    anon, heap_bytes = series.anon, heap.bytes
    verdict = judge_steady(anon, heap_bytes, counters_steady=counters["steady"], counters_end=counters["end"],
                           threshold=scaled_threshold(ctx.batch_bytes), batch_bytes=ctx.batch_bytes,
                           min_window=LEAK_JUDGED_MIN, floor_window=FLOOR_WINDOW, warmup=series.warmup)
    anon = anon[series.warmup:]
    verdict["phase"] = series.fields()
    heap_growth = None
    if len(heap_bytes) > 1 and len(anon) > 1:
        # heap growth per batch in the heap phase, scaled to the leak phase's window the verdict used
        heap_growth = int((heap_bytes[-1] - heap_bytes[0]) / (len(heap_bytes) - 1) * (len(anon) - 1))
    # growth counts from 4 thresholds (rule 4's least growth for a leak), at most 1 MiB: a 64 KiB-a-step leak
    # over a 14-step phase grows 0.7 MiB, which the fixed 1 MiB read as "none" beside a "leak" verdict
    cause = attribute_growth(counters["steady"], counters["end"], heap_growth_bytes=heap_growth,
                             anon_growth_bytes=anon[-1] - anon[0] if anon else 0,
                             device_growth_bytes=steady.device_memory.growth_bytes,
                             min_bytes=int(min(2**20, 4 * verdict["threshold_bytes_per_batch"])))
    fields = {**verdict, "injected_bytes_per_batch": ctx.leak.bytes_per_step or None, "cause": cause}
    return LeakPart(fields=fields, heap_growth=heap_growth)


def memory_figures(ctx: CellContext, *, build: BuildPart, compiled: CompilePart, plan: StepPlan,
                   memory: MemoryPart) -> MemoryFigures:
    """Device memory (allocator, driver), and the CPU stand-in for it (``harness.measure.host_peak``).

    The stand-in is the peak resident set of the memory phase's training steps, less the file-backed
    pages sampled before it (not those read now, after the row's bookkeeping may have mapped more
    libraries), the framework's import footprint and what the harness itself holds: the synthetic
    data, the batches in hand (one in the memory phase, a prefetched window without it), and the
    injected leak (not the model's memory).
    """
    device = ctx.model.device_memory()
    nvml = nvml_process_memory()
    status = proc_status()
    source = ctx.source
    batches_held = 1 if memory.steps else plan.steps_per_window
    held = (0 if isinstance(source.data, np.memmap) else source.data.nbytes) + batches_held * ctx.batch_bytes \
        + ctx.leak.held_bytes
    standin = cpu_standin_peak(memory.peak_rss, compiled.peak_rss, ctx.rss.file, build.import_anon,
                               held=held, shmem=status.get("RssShmem", 0),
                               floor_bytes=weights_and_state_bytes(build.expected.trainable,
                                                                   build.expected.non_trainable),
                               fallback_file=status.get("RssFile", 0))
    return MemoryFigures(device=device, nvml=nvml, standin=standin)
