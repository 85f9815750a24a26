"""Keras' own training loop for the timed steps: one ``model.fit`` over a ``keras.utils.PyDataset``.

The user trains with ``fit`` over a ``PyDataset`` subclass, so the Keras rows are timed
the same way: ``fit_steps`` runs one ``fit(epochs=1, verbose=0, shuffle=False)`` over a
dataset of ``steps`` batches whose ``__getitem__`` hands over the harness' next batch,
with Keras' data-pipeline defaults left as a user leaves them (``workers=1``,
``use_multiprocessing=False``, ``max_queue_size=10``: no enqueuer, batches are read on
the thread that drives the loop; ``steps_per_execution=1``).

Where the harness hooks in, and why not with a ``keras.callbacks.Callback`` (Keras
3.15, ``keras/src/callbacks/callback_list.py``): ``CallbackList`` converts the logs of
every batch to Python floats (``pythonify_logs``, a ``convert_to_numpy`` per value,
which waits for the device) *before* any ``Callback`` sees them. On backends that
declare themselves thread-safe (JAX, torch) it does so on a thread pool
(``_async_train``: on when every callback passed to ``fit`` leaves
``on_train_batch_end`` alone or sets ``async_safe``), so the loop's own thread never
waits; an async-safe ``Callback`` therefore still gets floats, but on a pool thread, out
of order with the loop, where the harness cannot close a timing window. TensorFlow is
not thread-safe to Keras, so there the conversion runs on the loop's thread and ``fit``
waits for the device after every step, as it does for any TensorFlow user.

So the hook sits one level up, in the ``CallbackList`` that ``fit`` accepts as is (it
builds its own only when handed something else): ``StepHook`` is the list ``fit`` would
build (``History``, no progress bar at ``verbose=0``, async dispatch decided by Keras),
and after Keras has dispatched each batch's callbacks it calls ``on_step(i, loss)`` on
the loop's thread with the loss exactly as the step returned it, a backend array that
nobody has waited for. The loss in ``fit``'s logs is Keras' running mean over the epoch
(the figure its progress bar shows), not the last step's; it is finite exactly when every
step's loss so far is.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import keras

BACKEND = keras.backend.backend()

#: Keras' TensorFlow adapter reads this many leading batches once to infer the dataset's
#: tensor spec before it iterates (``data_adapter_utils.NUM_BATCHES_FOR_TENSOR_SPEC``)
_SPEC_BATCHES = 2


def py_dataset_defaults() -> dict[str, Any]:
    """What a ``PyDataset`` subclass that passes nothing to ``super().__init__`` gets."""
    bare = keras.utils.PyDataset()
    return {"workers": bare.workers, "use_multiprocessing": bare.use_multiprocessing,
            "max_queue_size": bare.max_queue_size}


def async_callbacks() -> bool:
    """Whether ``fit`` converts each batch's logs off the loop's thread (no per-step device wait)."""
    from keras.src import backend as keras_backend  # IS_THREAD_SAFE has no public name

    return bool(getattr(keras_backend, "IS_THREAD_SAFE", False))


class FeedDataset(keras.utils.PyDataset):
    """``steps`` batches, each the next one ``feed()`` hands over, whatever index is asked for.

    An item is ``(x, None, None)``, the structure ``train_on_batch`` packs, so that ``fit``
    reuses the train step ``jax.jit`` compiled for it instead of compiling it again inside
    the first timed window. TensorFlow's ``tf.data`` cannot hold ``None``; there an item is
    ``(x,)`` (and ``fit``'s first step traces its iterator function once, whatever the item).

    Keras' TensorFlow adapter asks for the first ``_SPEC_BATCHES`` indices twice (once for
    the tensor spec, then to train): the same index gets the same batch, so ``feed`` is
    called exactly once per step.
    """

    def __init__(self, feed: Callable[[], Any], steps: int) -> None:
        super().__init__()  # Keras' defaults, as the user's PyDataset leaves them
        self._feed, self._steps = feed, steps
        self._replay: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._steps

    def __getitem__(self, index: int) -> tuple:
        with self._lock:  # tf.data's prefetch reads from its own threads
            if index in self._replay:
                return self._replay.pop(index)
        x = self._feed()
        item = (x,) if BACKEND == "tensorflow" else (x, None, None)
        if BACKEND == "tensorflow" and index < _SPEC_BATCHES:
            with self._lock:
                self._replay[index] = item
        return item


class StepHook(keras.callbacks.CallbackList):
    """The callback list ``fit`` would build for ``verbose=0``, plus ``on_step(i, loss)`` after each batch."""

    def __init__(self, model: keras.Model, steps: int, on_step: Callable[[int, Any], None]) -> None:
        super().__init__([], add_history=True, add_progbar=False, model=model, verbose=0, epochs=1, steps=steps)
        self._on_step = on_step

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_train_batch_end(batch, logs)  # Keras' own dispatch (async where the backend allows)
        self._on_step(batch, (logs or {}).get("loss"))


def fit_steps(model: keras.Model, feed: Callable[[], Any], steps: int, on_step: Callable[[int, Any], None]) -> None:
    """``steps`` training steps as one ``model.fit`` epoch over a ``FeedDataset``."""
    if steps <= 0:
        return
    model.fit(FeedDataset(feed, steps), epochs=1, verbose=0, shuffle=False,
              callbacks=StepHook(model, steps, on_step))


def fit_details(model: keras.Model) -> dict[str, Any]:
    """How ``fit`` fed and drove the steps, for the result row."""
    return {
        "steps_per_execution": int(model.steps_per_execution),
        "py_dataset": py_dataset_defaults(),
        "item": "(x,)" if BACKEND == "tensorflow" else "(x, None, None)",
        "data_path": {"jax": "PyDataset iterator (on a GPU: jax.device_put one batch ahead)",
                      "torch": "torch DataLoader(batch_size=None, num_workers=0)",
                      "tensorflow": "tf.data.Dataset.from_generator, prefetch(AUTOTUNE)"}.get(BACKEND, BACKEND),
        "async_callbacks": async_callbacks(),
        "verbose": 0,
    }


__all__ = ["FeedDataset", "StepHook", "fit_details", "fit_steps", "py_dataset_defaults"]
