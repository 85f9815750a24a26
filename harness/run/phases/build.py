"""The ``build`` phase: import the framework, build the model, load the shared initial weights, ready the batches."""

from __future__ import annotations

import time
from typing import Any, Callable

from harness.adapter import load_adapter_class, staged_loop
from harness.data import make_source
from harness.diagnose.footprints import record_footprint
from harness.diagnose.scenarios import scenario_step
from harness.impls_registry import BUILTIN
from harness.measure.probes import RssSampler, proc_status, release_free_heap, reset_peak_rss
from harness.measure.tracker import CompileCounters
from harness.run.events import emit
from harness.run.phases.context import CellContext, InjectedLeak, WrongParamCount
from harness.run.phases.footprint import import_harness_modules, warm_up_runtime
from harness.run.phases.parts import BuildPart
from harness.run.task import CellTask
from harness.spec.params import count_params
from harness.spec.reference import init_weights
from harness.spec.schema import VAESpec


def build(task: CellTask) -> tuple[CellContext, BuildPart]:
    """The cell's context and what building it took; the compile step's peak RSS starts after it."""
    spec = VAESpec.from_dict(task.spec)
    emit(phase="build")
    harness_anon = import_harness_modules()  # before t0: the harness's own, not the framework's
    t0 = time.perf_counter()
    cls = load_adapter_class(task.impl)  # the framework is imported here, and only here
    cls.check_precision(spec)
    import_s = time.perf_counter() - t0
    release_free_heap()  # the import's freed scratch is no footprint: a later trim would return it
    import_anon = proc_status().get("RssAnon", 0)  # the framework's own footprint, before any model
    runtime_anon, runtime_s, runtime_error = _warmed(cls, spec, task, import_anon)
    model = _built(cls, spec, task)
    if task.loop:
        model.use_loop(task.loop)
    counts, expected = model.param_counts(), count_params(spec)
    if _differ(counts, expected):
        raise WrongParamCount(_wrong_count(task.impl, counts, expected))
    build_s = time.perf_counter() - t0 - runtime_s
    source = make_source(task.kmer, task.batch, task.data, task.columns, seed=spec.settings.seed,
                         width=spec.input_length)
    reset_peak_rss()  # the compile step's peak starts here, after build and the shared weights
    step_fn = _step_function(task, model)
    timed_loop, host_batch = _timed_loop(model, step_fn)
    ctx = CellContext(task=task, spec=spec, cls=cls, model=model, source=source, step_fn=step_fn,
                      timed_loop=timed_loop, host_batch=host_batch, leak=InjectedLeak(task.inject_leak_bytes),
                      rss=RssSampler(), counters=CompileCounters(model.counters), t0=t0)
    ctx.rss.start()
    return ctx, BuildPart(import_s=import_s, build_s=build_s, import_anon=import_anon, counts=counts,
                          expected=expected, harness_anon=harness_anon, runtime_anon=runtime_anon, runtime_s=runtime_s,
                          runtime_error=runtime_error)


def _warmed(cls: Any, spec: VAESpec, task: CellTask, import_anon: int) -> tuple[int | None, float, str | None]:
    """The runtime's footprint (``harness.run.phases.footprint``), or (None, 0, why) where the task turns the
    warm-up off, the impl is a plug-in, or the adapter cannot train the tiny model: the cell runs on, and its
    estimate has no measured constant."""
    if not task.warm_runtime:
        return None, 0.0, "off"
    if task.impl not in BUILTIN:  # a plug-in has no fit to use it, and its steps are its own (a planted
        return None, 0.0, "a plug-in"  # failure counts them): the tiny model runs for the built-in impls only
    t0 = time.perf_counter()
    try:
        anon, seconds = warm_up_runtime(cls, spec, task.loop)
    except Exception as exc:  # noqa: BLE001 - a footprint it cannot take is a missing figure, not a failed cell
        return None, time.perf_counter() - t0, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if cls.device_kind() == "cpu":  # the next estimate's constant on this machine (harness.diagnose.footprints)
        record_footprint(task.impl, max(0, anon - import_anon))
    return anon, seconds, None


def _built(cls: Any, spec: VAESpec, task: CellTask) -> Any:
    """The model, loaded with the shared initial weights as it is built (``VAEAdapter.with_weights``) where the
    task wants them. A build that cannot take them because it is not the spec's model (a plug-in with other
    layers, whose ``set_weights`` refuses a shape) fails as that, ``WrongParamCount``, and not as the error its
    loading raised, as it did when the counts were checked before the weights were set."""
    if not task.shared_init:
        return cls(spec)
    try:
        return cls.with_weights(spec, init_weights(spec))
    except Exception as exc:
        try:
            counts = cls.count_params(spec)
        except Exception:  # noqa: BLE001 - the loading's own error says more than the count's
            raise exc from None
        expected = count_params(spec)
        if _differ(counts, expected):
            raise WrongParamCount(_wrong_count(task.impl, counts, expected)) from exc
        raise


def _differ(counts: Any, expected: Any) -> bool:
    return (counts.trainable, counts.non_trainable) != (expected.trainable, expected.non_trainable)


def _wrong_count(impl: str, counts: Any, expected: Any) -> str:
    return (f"{impl}: param_counts() gives {counts.trainable:,} trainable and {counts.non_trainable:,} "
            f"non-trainable parameters, the spec's table {expected.trainable:,} and {expected.non_trainable:,}: the "
            "build is not the spec's model (python -m bench params compares every build's)")


def _step_function(task: CellTask, model: Any) -> Callable[[Any], Any]:
    """The plain train step, or the one a named scenario replaces it with."""
    if not task.scenario:
        return model.train_step
    return scenario_step(task.scenario, model, task.impl)


def _timed_loop(model: Any, step_fn: Callable[[Any], Any]) -> tuple[Callable[..., None], Callable[[Any], Any]]:
    """The loop the steady phase times and how it wants its batches: the framework's own loop
    (``train_steps``, on ``host_batch``es), or, for a scenario's step, a staged loop on numpy batches."""
    if step_fn == model.train_step:
        return model.train_steps, model.host_batch

    def scenario_loop(feed: Callable[[], Any], steps: int, on_step: Callable[[int, Any], None]) -> None:
        staged_loop(step_fn, _same, feed, steps=steps, on_step=on_step)

    return scenario_loop, _same


def _same(batch: Any) -> Any:
    return batch
