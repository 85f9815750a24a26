"""Each build's staged train step, timed by pytest-benchmark: a timer independent of the harness's.

One round is one ``train_step`` on a batch already staged on the device
(``to_device(host_batch(x))``, then a sync) followed by a device sync, so the figure is
the framework's compute, comparable with a cell's ``device_step``
(``tests/measure/test_timer_crosscheck.py`` checks that the two agree, with rounds of as many steps
as a cell's timing window, so that both timers wait for the device equally often).

Keras picks its backend once per process, so a ``keras-*`` parameter runs only where
``KERAS_BACKEND`` names its backend; ``nox -s microbench`` runs pytest once per impl:

    pytest bench/microbench/test_steps.py -k "torch and not keras"
    KERAS_BACKEND=jax pytest bench/microbench/test_steps.py -k keras-jax

Environment knobs (defaults: dense, k=5, batch 64, 100 rounds after 20 warm-up rounds, one
step per round): ``VAEBENCH_STEP_SPEC``, ``VAEBENCH_STEP_KMER``, ``VAEBENCH_STEP_BATCH``,
``VAEBENCH_STEP_ROUNDS``, ``VAEBENCH_STEP_WARMUP``, ``VAEBENCH_STEP_ITERATIONS`` (steps per round,
one sync at the round's end; the figure stays per step, as the harness's windows).
"""

from __future__ import annotations

import itertools
import os

import pytest

from harness.adapter import BUILTIN, is_installed, load_adapter_class
from harness.data import make_source
from harness.spec.presets import resolve_spec
from harness.spec.reference import init_weights

#: ``VAEBENCH_STEP_IMPL=path.py:Class`` benchmarks that plug-in alone (the timer cross-check's planted step)
IMPLS = [os.environ["VAEBENCH_STEP_IMPL"]] if os.environ.get("VAEBENCH_STEP_IMPL") else list(BUILTIN)


def _setting(name: str, default: str) -> str:
    return os.environ.get(f"VAEBENCH_STEP_{name}", default)


@pytest.mark.parametrize("impl", IMPLS)
def test_staged_step(benchmark, impl):
    backend = BUILTIN[impl].env.get("KERAS_BACKEND") if impl in BUILTIN else None
    if backend and os.environ.get("KERAS_BACKEND") != backend:
        pytest.skip(f"{impl} needs KERAS_BACKEND={backend} in its own process (Keras' backend is per process)")
    if not is_installed(impl):
        pytest.skip(f"{impl}: framework not installed")
    kmer, batch = int(_setting("KMER", "5")), int(_setting("BATCH", "64"))
    spec = resolve_spec(_setting("SPEC", "dense"), kmer=kmer)
    model = load_adapter_class(impl).with_weights(spec, init_weights(spec))
    x = model.to_device(model.host_batch(make_source(kmer, batch, seed=spec.settings.seed, width=spec.input_length).next()))
    model.synchronize()

    # a round is ``iterations`` steps and one device sync at its end; pytest-benchmark reports the
    # time per iteration, i.e. per step. One step per round by default: a sync after every step
    per_round = int(_setting("ITERATIONS", "1"))
    calls = itertools.count(1)

    def step_then_sync():
        handle = model.train_step(x)
        if next(calls) % per_round == 0:
            model.synchronize()
        return handle

    benchmark.extra_info.update(impl=impl, spec=spec.name, kmer=kmer, batch=batch, steps_per_sync=per_round)
    handle = benchmark.pedantic(step_then_sync, rounds=int(_setting("ROUNDS", "100")),
                                warmup_rounds=int(_setting("WARMUP", "20")), iterations=per_round)
    assert model.loss_value(handle) == model.loss_value(handle)  # finite enough to compare with itself: not NaN
