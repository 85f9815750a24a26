"""The Keras build's timed loops, ``fit`` over a ``PyDataset`` and ``train_on_batch``, on all three backends.

Keras fixes its backend once per process, so, as in ``tests/impls/keras/test_impl_keras.py``, every
``check_*`` below runs in the run's one child per backend (``tests/fixtures/keras_children.py``)
and each entry of its report becomes its own test here. Dense at k=3 (L=32), batch 8.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable

import numpy as np
import pytest
from fixtures.keras_children import check_registry, keras_check_tests

from harness.spec.presets import preset

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

BATCH, LENGTH, STEPS = 8, 32, 50

CHECKS, check = check_registry()


def data(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` k-mer-profile-like batches in [0, 1] (cycled by the feeds) and fixed noise."""
    rng = np.random.default_rng(seed)
    x = rng.dirichlet(np.ones(LENGTH), size=(n, BATCH)).astype(np.float32) * LENGTH / 4
    return np.clip(x, 0, 1).astype(np.float32), rng.normal(size=(BATCH, 256)).astype(np.float32)


class Feed:
    """Cycles the batches, counts its calls; ``stage`` passes each through ``to_device``."""

    def __init__(self, batches: np.ndarray, stage: Callable[[Any], Any] | None = None) -> None:
        self.batches, self.stage, self.calls = batches, stage, 0
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            x = self.batches[self.calls % len(self.batches)]
            self.calls += 1
        return self.stage(x) if self.stage else x


class Recorder:
    """Records each on_step; at step ``sync_at`` synchronises, as a timing window's close does."""

    def __init__(self, model=None, sync_at: int = -1) -> None:
        self.seen: list[tuple[int, Any, str]] = []
        self.model, self.sync_at, self.ready_after_sync = model, sync_at, None

    def __call__(self, i: int, handle: Any) -> None:
        self.seen.append((i, handle, threading.current_thread().name))
        if i == self.sync_at:
            self.model.synchronize()
            self.ready_after_sync = handle.is_ready() if hasattr(handle, "is_ready") else None


def iterations(model) -> int:
    import keras

    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


@check
def check_loops(cls, model) -> dict[str, Any]:
    backend = os.environ["KERAS_BACKEND"]
    assert cls.loops == ("fit", "train_on_batch") and model.loop == "fit"
    # fit leaves the loss on the device except where Keras converts logs on the loop's thread (TensorFlow)
    assert model.syncs_every_step is (backend == "tensorflow"), model.syncs_every_step
    assert cls.stages_input is (backend != "tensorflow")
    details = model.loop_details()
    assert details["steps_per_execution"] == 1
    assert details["py_dataset"] == {"workers": 1, "use_multiprocessing": False, "max_queue_size": 10}, details
    model.use_loop("train_on_batch")
    assert model.loop == "train_on_batch" and model.syncs_every_step is True
    assert model.loop_details()["steps_per_execution"] == 1
    with pytest.raises(ValueError, match="nope"):
        model.use_loop("nope")
    assert model.loop == "train_on_batch"
    model.use_loop("fit")
    assert model.loop == "fit" and model.syncs_every_step is (backend == "tensorflow")
    return details


@check
def check_fit(cls, model) -> dict[str, Any]:
    """One fit over STEPS batches: on_step once per step, in order, on the loop's thread, with the
    loss as a backend array; exactly STEPS optimizer iterations and feed calls; the loss falls."""
    from harness.spec.reference import init_weights

    model.set_weights(init_weights(model.spec))
    batches, eps = data()
    before, _ = model.loss_and_grads(batches[0], eps)
    model.loss_value(model.train_step(batches[0]))  # what the cell's compile step does first
    start, compiles = iterations(model), model.counters()
    feed, rec = Feed(batches), Recorder(model, sync_at=STEPS // 2)
    model.train_steps(feed, STEPS, rec)
    model.synchronize()
    assert [i for i, _, _ in rec.seen] == list(range(STEPS))
    assert {name for _, _, name in rec.seen} == {threading.main_thread().name}
    assert not any(isinstance(h, (float, int, np.floating)) for _, h, _ in rec.seen), type(rec.seen[0][1])
    assert feed.calls == STEPS, feed.calls
    assert iterations(model) - start == STEPS
    losses = [model.loss_value(h) for _, h, _ in rec.seen]  # fit's running mean over the epoch
    after, _ = model.loss_and_grads(batches[0], eps)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], (losses[0], losses[-1])
    assert after < before, (before, after)
    if os.environ["KERAS_BACKEND"] == "jax":  # mid-fit the state lives apart from the variables
        assert rec.ready_after_sync is True, "synchronize() inside fit did not wait for the step"
    grew = {k: v - compiles.get(k, 0) for k, v in model.counters().items()}
    if os.environ["KERAS_BACKEND"] == "jax":  # the items match train_on_batch's: the jitted step is reused
        assert grew == {"compiles": 0, "compile_cache_hits": 0}, grew
    return {"loss_before": before, "loss_after": after, "running_mean": [losses[0], losses[-1]],
            "handle": type(rec.seen[0][1]).__name__, "counters_grew": grew}


@check
def check_fit_on_staged_batches(cls, model) -> dict[str, Any]:
    """The device_step phase's feed: batches already passed through ``to_device``."""
    batches, _ = data(seed=1)
    staged = model.to_device(batches[0])
    assert not isinstance(staged, np.ndarray) or os.environ["KERAS_BACKEND"] == "tensorflow"
    start = iterations(model)
    feed, rec = Feed(batches, model.to_device), Recorder()
    model.train_steps(feed, 6, rec)
    assert [i for i, _, _ in rec.seen] == list(range(6)) and feed.calls == 6
    assert iterations(model) - start == 6
    assert np.isfinite(model.loss_value(rec.seen[-1][1]))
    return {"staged": type(staged).__name__}


@check
def check_train_on_batch_loop(cls, model) -> dict[str, Any]:
    batches, _ = data(seed=2)
    model.use_loop("train_on_batch")
    try:
        for stage in (None, model.to_device):
            start = iterations(model)
            feed, rec = Feed(batches, stage), Recorder()
            model.train_steps(feed, 5, rec)
            assert [i for i, _, _ in rec.seen] == list(range(5)) and feed.calls == 5
            assert all(isinstance(h, float) for _, h, _ in rec.seen)  # train_on_batch returns host floats
            assert iterations(model) - start == 5
    finally:
        model.use_loop("fit")
    return {"losses": [h for _, h, _ in rec.seen]}


#: what the checks share in a child, built once per backend from the adapter class
SHARED = lambda cls: cls(preset("dense", LENGTH))
reports, test_child_ran, test_check = keras_check_tests(__file__, CHECKS)
