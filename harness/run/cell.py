"""One cell (impl x spec x batch x repeat), measured inside its worker.

Phases, each announced to the parent as an event so a hard crash can be
placed:

``build``       construct the model and load the shared canonical initial weights.
``compile``     the first step, synchronised, timed on its own: tracing,
                compilation and the first run. Reported as ``compile_s``
                (``compile_cached`` where JAX loaded it from the run's cache).
``warmup``      a few more steps, each synchronised and timed (the median of
                their second half sizes a time budget), then two steps through
                the timed loop itself, so its first-call setup is off the clock.
``steady``      ``steps`` steps through the framework's own loop
                (``adapter.train_steps``), timed in windows by
                ``harness.run.windows``: one device sync per window, the next
                window's batches made ready between windows, off the clock.
                This is ``step``, the headline. Leading windows still slow by
                ``harness.measure.stats.detect_warmup`` are dropped and counted.
``device_step`` on an accelerator, the same loop on batches staged on the
                device before each window's clock: the framework's compute alone.
``heap``        a few more steps with tracemalloc on, after the timing and
                untimed: tracemalloc slows Python-heavy steps far more than 5%,
                so it never runs while the clock does.
``memory``      on a CPU, a few steps on a trimmed heap whose peak RSS stands
                in for device memory.
``stats``       the statistics, FLOP rates and leak verdict, from what the
                phases above took (no steps).
``confirm``     only where the steady window's leak verdict is pending (it read
                "leak", or its evidence disagrees): untimed steps that settle it
                (``harness.run.confirm``), after every other figure is taken.

After every step the anonymous and file-backed RSS are sampled.
"""

from __future__ import annotations

import math
import mmap
import os
import time
import tracemalloc
from typing import Any

import numpy as np

from harness.adapter import staged_loop
from harness.data import make_source
from harness.measure.probes import (
    RssSampler,
    frameworks_loaded,
    nvml_process_memory,
    peak_rss_bytes,
    proc_status,
    release_free_heap,
    reset_peak_rss,
)
from harness.run.compile_cache import compile_cached
from harness.run.events import emit
from harness.run.schedule import budgeted_steps, confirmation_cap, heap_steps, steps_per_window, warmup_steps
from harness.run.task import CellTask
from harness.run.windows import Windows
from harness.spec.params import count_params
from harness.spec.reference import init_weights
from harness.spec.schema import VAESpec

#: untimed steps on a trimmed heap whose VmHWM is the CPU stand-in for device memory
MEMORY_STEPS = 3
#: steps run through the timed loop itself before its clock starts (its first-call setup)
LOOP_WARMUP_STEPS = 2
#: batches prefetched for one timing window are capped at this many bytes
PREFETCH_BYTES = 256 * 2**20


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN or inf: a row of kind ``nan_loss``."""


class InjectedLeak:
    """Positive control: keeps ``bytes_per_step`` of new, touched memory per step.

    Each step maps fresh anonymous pages and writes them, so the kernel commits
    exactly that much more RssAnon. A ``malloc``'d buffer would not do: below the
    mmap threshold it reuses heap pages an earlier free left resident (a JAX
    worker has megabytes of them after compiling), and RSS would not move.
    """

    def __init__(self, bytes_per_step: int) -> None:
        self.bytes_per_step = bytes_per_step
        self.kept: list[mmap.mmap] = []

    def step(self) -> None:
        if self.bytes_per_step:
            buf = mmap.mmap(-1, self.bytes_per_step, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            np.frombuffer(buf, np.uint8)[:] = 1  # touch every page
            self.kept.append(buf)


def _check(loss: float, step: int) -> float:
    if not math.isfinite(loss):
        raise NonFiniteLoss(f"loss is {loss} at step {step}")
    return loss


def run_cell(task: CellTask) -> dict[str, Any]:
    from harness.adapter import load_adapter_class, row_label

    spec = VAESpec.from_dict(task.spec)
    batch, steps = task.batch, task.steps
    steps_requested = steps
    emit(phase="build")
    t0 = time.perf_counter()
    cls = load_adapter_class(task.impl)
    import_s = time.perf_counter() - t0
    import_anon = proc_status().get("RssAnon", 0)  # the framework's own footprint, before any model
    model = cls(spec)
    if task.loop:
        model.use_loop(task.loop)
    counts, expected = model.param_counts(), count_params(spec)
    if task.shared_init:
        model.set_weights(init_weights(spec))
    build_s = time.perf_counter() - t0
    source = make_source(task.kmer, batch, task.data, task.columns, seed=spec.settings.seed,
                         width=spec.input_length)
    reset_peak_rss()  # the compile step's peak starts here, after build and the shared weights
    step_fn = _step_function(task, model)
    leak = InjectedLeak(task.inject_leak_bytes)
    rss = RssSampler()
    counters_start = model.counters()

    # ---- compile: the first step on its own
    emit(phase="compile")
    x = source.next()
    model.reset_peak_memory()
    t = time.perf_counter()
    loss = _check(model.loss_value(step_fn(x)), 0)
    model.synchronize()
    compile_s = time.perf_counter() - t
    cached = compile_cached(counters_start, model.counters())
    leak.step()
    rss.sample()
    # the compile step's host peak (compiler scratch, first-touch allocations) is kept
    # apart, as its time is; the training peak is measured in the memory phase
    compile_hwm = peak_rss_bytes()

    # ---- warm-up: synchronised single steps
    emit(phase="warmup", compile_s=compile_s)
    n_warm = task.warmup_steps or warmup_steps(steps, budgeted=bool(task.time_budget_s))
    warm_times: list[float] = []
    iteration_times: list[float] = []  # the step with the fetch and the per-step samples around it
    for i in range(n_warm):
        t_iter = time.perf_counter()
        x = source.next()
        t = time.perf_counter()
        handle = step_fn(x)
        model.synchronize()
        warm_times.append(time.perf_counter() - t)
        loss = _check(model.loss_value(handle), i + 1)
        leak.step()
        rss.sample()
        iteration_times.append(time.perf_counter() - t_iter)
    plain = float(np.median(warm_times[len(warm_times) // 2:])) if warm_times else float("nan")

    # ---- a time budget shortens the steady phase, never the compile or warm-up; it is the cell's
    # wall time, so the loop warm-up, the heap and memory phases after the timing are paid from it too
    budget = task.time_budget_s
    passes = 2 if _times_device_step(model, cls, task) else 1
    if budget and plain > 0:
        # planned from the whole iteration: a sub-millisecond step costs less than its RSS sample
        per_step = max(plain, float(np.median(iteration_times[len(iteration_times) // 2:])))
        untimed = LOOP_WARMUP_STEPS + (0 if model.device_memory() else MEMORY_STEPS)
        heap_planned = 0 if task.heap == "off" else task.heap_steps
        steps = budgeted_steps(float(budget), time.perf_counter() - t0, per_step, steps, timed_passes=passes,
                               untimed_steps=untimed, heap=heap_planned)

    def each_step() -> None:
        leak.step()
        rss.sample()

    if step_fn == model.train_step:
        timed_loop, host_batch = model.train_steps, model.host_batch
    else:  # a scenario's loop body takes numpy batches
        def timed_loop(feed, n, on_step):
            staged_loop(step_fn, _same, feed, n, on_step)

        host_batch = _same

    # the timed loop's own first-call work (Keras: fit's iterator, callbacks and, on TensorFlow,
    # tracing fit's function) is paid here, off the clock, as it would be once in a user's epoch
    timed_loop(lambda: host_batch(source.next()), LOOP_WARMUP_STEPS, lambda i, handle: each_step())
    model.synchronize()

    # ---- steady state: the framework's own training loop, timed in windows with one sync each
    emit(phase="steady")
    row_bytes = source.width * 4
    spw = task.steps_per_window or steps_per_window(steps)
    spw = max(1, min(spw, PREFETCH_BYTES // max(1, (batch * row_bytes))))
    counters_steady = model.counters()
    device_steady = model.device_memory()
    rss_steady_index = len(rss.anon)
    losses: list[float] = []
    progress = _Progress()

    def check_loss(handle: Any, done: int) -> None:
        losses.append(_check(model.loss_value(handle), n_warm + LOOP_WARMUP_STEPS + done))

    def windows_for(staged: bool) -> Windows:
        prepare = (lambda x: model.to_device(host_batch(x))) if staged else host_batch
        return Windows(steps, spw, source.next, prepare, model.synchronize, each_step, check_loss,
                       staged=staged, progress=progress)

    step_windows = windows_for(staged=False)
    timed_loop(step_windows.feed, steps, step_windows.on_step)
    counters_end = model.counters()
    device_end = model.device_memory()
    anon = rss.anon[rss_steady_index:]

    # ---- device_step: the same loop on batches staged on the device before each window's clock
    device_windows = None
    if passes == 2:
        emit(phase="device_step")
        device_windows = windows_for(staged=True)
        timed_loop(device_windows.feed, steps, device_windows.on_step)
    loss = losses[-1]
    done = steps

    # ---- heap: tracemalloc slows Python-heavy steps, so it runs after the timing, untimed
    heap_mode = task.heap
    heap: list[int] = []
    heap_anon: list[int] = []
    if heap_mode != "off":
        emit(phase="heap")
        n_heap = task.heap_steps or heap_steps(steps, budgeted=bool(budget))
        tracemalloc.start()
        for _ in range(n_heap):
            handle = step_fn(source.next())
            # one step in flight at a time: unsynced, Flax queued 15 steps' inputs
            # here (+230 MiB at dense k=7 b=512) that no training loop would hold
            model.synchronize()
            leak.step()
            rss.sample()
            heap.append(tracemalloc.get_traced_memory()[0])
            heap_anon.append(rss.anon[-1])
        model.synchronize()
        tracemalloc.stop()
        loss = _check(model.loss_value(handle), n_warm + done + n_heap)
    rss.close()

    # ---- memory (CPU only): the training peak, from a trimmed heap, untimed. Without a
    # device allocator the peak is VmHWM, which would otherwise keep whatever glibc still
    # maps from the compile step; trimming any earlier would make the steady phase's RSS
    # regrow and look like a leak
    heap_trimmed = peak_restarted = False
    n_memory = 0
    if not model.device_memory():
        emit(phase="memory")
        heap_trimmed = release_free_heap()
        peak_restarted = reset_peak_rss()
        for _ in range(MEMORY_STEPS):
            handle = step_fn(source.next())
            model.synchronize()
            leak.step()
            n_memory += 1
        loss = _check(model.loss_value(handle), n_warm + done + len(heap) + n_memory)
    peak_rss = peak_rss_bytes()
    emit(phase="stats")
    heap_note = (f"measured over {len(heap)} untimed steps after the timing" if heap else "off by request")

    from harness.diagnose.evidence import judge_steady
    from harness.diagnose.leak import attribute_growth, scaled_threshold
    from harness.measure.peak import flop_fields
    from harness.measure.stats import detect_warmup, summarize_steps
    from harness.spec.flops import step_flops

    def window_stats(w: Windows) -> tuple[dict[str, Any], int]:
        # leading windows still slow by the warm-up rule are dropped (the sentinel stands
        # for the compile step the rule always counts as warm-up)
        dropped = max(0, detect_warmup([math.inf, *w.times]) - 1) if len(w.times) >= 8 else 0
        timed = w.times[dropped:]
        elapsed, n = w.last_window
        stats = summarize_steps(timed or [elapsed], spw if timed else n, batch)
        return {**stats.to_dict(), "window_times_s": [t / spw for t in timed], "feed_fallbacks": w.fallbacks}, dropped

    step_stats, dropped = window_stats(step_windows)
    if device_windows is not None:
        device_step_stats, _ = window_stats(device_windows)
        device_step_source = "batches staged on the device before each window's clock started"
    else:
        device_step_stats = step_stats
        device_step_source = _device_step_same_reason(model, cls)
    # the verdict on all the evidence, with a threshold scaled to the batch (harness.diagnose.evidence)
    verdict = judge_steady(anon, heap, counters_steady, counters_end, scaled_threshold(batch * row_bytes),
                           batch * row_bytes)
    heap_growth = None
    if len(heap) > 1 and len(anon) > 1:
        # heap growth per batch in the heap phase, scaled to the steady window the verdict used
        heap_growth = int((heap[-1] - heap[0]) / (len(heap) - 1) * (len(anon) - 1))
    device_growth = _device_growth(device_steady, device_end)
    cause = attribute_growth(counters_steady, counters_end, heap_growth, anon[-1] - anon[0] if anon else 0,
                             device_growth)
    device = model.device_memory()
    nvml = nvml_process_memory()
    status = proc_status()
    # CPU stand-in for device memory (harness.measure.host_peak): the peak resident set of the
    # memory phase's training steps, less the file-backed pages sampled before it (not those read
    # now, after the imports above mapped more libraries), the framework's import footprint and
    # what the harness itself holds: the synthetic data, the batches in hand (one in the memory
    # phase, a prefetched window without it), and the injected leak (not the model's memory)
    from harness.measure.host_peak import cpu_standin_peak, weights_and_state_bytes

    batches_held = 1 if n_memory else spw
    held = (0 if isinstance(source.data, np.memmap) else source.data.nbytes) + batches_held * batch * row_bytes \
        + leak.bytes_per_step * len(leak.kept)
    standin = cpu_standin_peak(peak_rss, compile_hwm, rss.file, import_anon, held, status.get("RssShmem", 0),
                               weights_and_state_bytes(expected.trainable, expected.non_trainable),
                               fallback_file=status.get("RssFile", 0))
    training_peak, compile_peak = standin.training_bytes, standin.compile_bytes
    row = {
        "row": row_label(cls, task.impl),
        "versions": cls.versions(),
        "device_kind": cls.device_kind(),
        "syncs_every_step": bool(getattr(model, "syncs_every_step", False)),
        "frameworks_loaded": frameworks_loaded(),
        "pid": os.getpid(),
        "import_s": import_s,
        "build_s": build_s,
        "compile_s": compile_s,
        "compile_cached": cached,
        "warmup_step_times_s": warm_times,
        "steady_windows_dropped": dropped,
        "train_loop": model.loop,
        "loop_details": model.loop_details(),
        "stages_input": bool(getattr(cls, "stages_input", False)),
        "final_loss": loss,
        "steps_measured": steps,
        "steps_requested": steps_requested,
        "time_budget_s": budget,
        "param_counts": {"trainable": counts.trainable, "non_trainable": counts.non_trainable},
        "param_counts_expected": {"trainable": expected.trainable, "non_trainable": expected.non_trainable},
        "step_stats": step_stats,
        "device_step_stats": device_step_stats,
        "device_step_source": device_step_source,
        "input_bound_ratio": step_stats["median_s"] / device_step_stats["median_s"],
        # FLOPs of one step from the spec, and the achieved rates; MFU needs the run's peak (runner)
        **flop_fields(step_flops(spec, batch), step_stats["median_s"], device_step_stats["median_s"]),
        "memory": {
            "device": device,
            "device_source": "allocator" if device else None,
            "nvml_bytes": nvml,
            "peak_rss_bytes": peak_rss,
            "import_anon_bytes": import_anon,
            "training_peak_rss_bytes": training_peak,
            "compile_peak_rss_bytes": compile_peak,
            "memory_phase_steps": n_memory,
            "heap_trimmed": heap_trimmed,
            "peak_rss_restarted": peak_restarted,
            "cpu_standin": None if device else (
                f"peak RSS (VmHWM) over {n_memory} training steps on a trimmed heap, less the framework's import "
                "footprint and file-backed pages, stands in for device memory on CPU; the compile step's own "
                "peak is compile_peak_rss_bytes"),
            "peak_bytes": device.get("peak_bytes") if device else training_peak,
            **({} if device else standin.fields()),
        },
        "host": {
            "rss_anon": rss.anon,
            "rss_file": rss.file,
            "steady_from": rss_steady_index,
            "file_growth_bytes": (rss.file[-1] - rss.file[rss_steady_index]) if rss.file else 0,
            "anon_growth_bytes": (anon[-1] - anon[0]) if anon else 0,
            "heap_tracking": heap_note,
            "heap_bytes": heap,
            "heap_phase_anon_bytes": heap_anon,
            "heap_growth_bytes": heap_growth,
        },
        "leak": {**verdict, "injected_bytes_per_batch": leak.bytes_per_step or None, "cause": cause},
        "counters": {"start": counters_start, "steady": counters_steady, "end": counters_end},
    }
    # ---- confirm: untimed, after everything else, settles a pending leak verdict (harness.run.confirm);
    # in a budgeted cell it is capped by the cell's budget (harness.run.schedule.confirmation_cap)
    from harness.diagnose.evidence import CONFIRM_MAX_S
    from harness.run.confirm import confirm_leak

    row["leak"] = confirm_leak(row["leak"], task.confirm, lambda: step_fn(source.next()), model, leak.step,
                               lambda h, i: _check(model.loss_value(h), i), len(anon), task.confirm_steps,
                               confirmation_cap(task.confirm_max_s, budget, CONFIRM_MAX_S))
    row["leak"]["confirm_mode"] = task.confirm  # "off" is why a leak can stay unconfirmed
    return row


def _same(batch: Any) -> Any:
    return batch


class _Progress:
    """Progress events for the parent, at most one a second."""

    def __init__(self) -> None:
        self._next = time.perf_counter() + 1.0

    def __call__(self, done: int, steps: int) -> None:
        if time.perf_counter() >= self._next:
            emit(phase="steady", done=done, steps=steps)
            self._next = time.perf_counter() + 1.0


def _times_device_step(model, cls, task: CellTask) -> bool:
    """``device_step`` is timed apart only where it can differ from ``step``: a build that
    stages batches, on an accelerator, training with its plain step (not a scenario)."""
    return bool(getattr(cls, "stages_input", False)) and cls.device_kind() != "cpu" and not task.scenario


def _device_step_same_reason(model, cls) -> str:
    if cls.device_kind() == "cpu":
        return "same as step: on a CPU a batch in host memory is already in device memory"
    if not getattr(cls, "stages_input", False):
        return "same as step: this adapter does not stage batches on the device (no to_device)"
    return "same as step: a scenario replaces the train step"


def _device_growth(a: dict, b: dict) -> int | None:
    if a and b and a.get("bytes_in_use") is not None and b.get("bytes_in_use") is not None:
        return int(b["bytes_in_use"]) - int(a["bytes_in_use"])
    return None


def _step_function(task: CellTask, model):
    """The plain train step, or the one a named scenario replaces it with."""
    name = task.scenario
    if not name:
        return model.train_step
    from harness.diagnose.scenarios import scenario_step

    return scenario_step(name, model, task.impl)
