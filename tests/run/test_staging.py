"""Staging, the GPU feeding path, exercised on CPU: the default loop moves batch i+1 towards the device
while step i runs, and each build's ``host_batch`` / ``to_device`` hand over what its ``train_step`` takes.

On a GPU the overlap is what brings ``step`` close to ``device_step``: in the H200 measurements behind
issue 11 (``../shared/measurements/``), a textbook torch loop at dense k=7 B=4096 took 24.6 ms a step with
pageable copies and 11.5 ms with pinned buffers and ``non_blocking`` copies. Here, without a GPU, the order
of the calls is checked, and that the builds' staged batches train like numpy batches.
"""

from __future__ import annotations

import numpy as np
import pytest

from harness.adapter import load_adapter_class, staged_loop
from harness.spec.presets import preset


def test_the_next_batch_is_staged_after_the_step_is_dispatched_and_before_it_is_waited_on():
    events: list[tuple[str, int]] = []
    fed = iter(range(100))

    def feed() -> int:
        n = next(fed)
        events.append(("feed", n))
        return n

    def to_device(b: int) -> str:
        events.append(("stage", b))
        return f"dev{b}"

    def step(handle: str) -> str:
        events.append(("step", int(handle[3:])))
        return f"loss{handle[3:]}"

    staged_loop(step, to_device, feed, 3, lambda i, h: events.append(("on_step", i)))
    assert events == [("feed", 0), ("stage", 0),
                      ("step", 0), ("feed", 1), ("stage", 1), ("on_step", 0),
                      ("step", 1), ("feed", 2), ("stage", 2), ("on_step", 1),
                      ("step", 2), ("on_step", 2)]  # no batch is staged after the last step


@pytest.mark.parametrize("impl", ["torch", "flax"])
def test_a_builds_staged_batches_train_like_numpy_batches(impl):
    """host_batch, then to_device, then train_step: the same losses as numpy batches handed to train_step."""
    pytest.importorskip({"torch": "torch", "flax": "flax"}[impl])
    spec = preset("dense", 32)
    rng = np.random.default_rng(0)
    batches = [rng.random((8, 32), dtype=np.float32) for _ in range(3)]
    eps = rng.standard_normal((8, spec.latent_dim)).astype(np.float32)
    cls = load_adapter_class(impl)
    plain = cls(spec)
    staged = cls.with_weights(spec, plain.get_weights())  # built loaded: one initialiser program, not two
    want = [plain.loss_value(plain.train_step(x, eps)) for x in batches]
    got = []
    staged_loop(lambda h: staged.train_step(h, eps), lambda b: staged.to_device(staged.host_batch(b)),
                iter(batches).__next__, len(batches), lambda i, h: got.append(staged.loss_value(h)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    handle = staged.to_device(staged.host_batch(batches[0]))
    assert not isinstance(handle, np.ndarray), type(handle)  # a framework array, already placed
