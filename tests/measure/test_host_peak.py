"""The CPU stand-in peak (``harness.measure.host_peak``): never negative, never below weights + Adam state.

End to end on docs/design.md's example adapter (``tests/fixtures/planted.py:NumpyVAE``, dense k=3 b=32,
50 steps), which used to report about −13.5 MiB (compile −2.6 MiB): the file-backed pages were read
after the row's own late imports had mapped more libraries. NumpyVAE keeps the canonical weights and
no Adam moments, so its measured figure is above its weights but below weights + Adam state: the
floor applies there, and the row says so.
"""

from __future__ import annotations

import pytest

from harness.measure.host_peak import STANDIN_METHOD, cpu_standin_peak, held_bytes, weights_and_state_bytes
from harness.run.runner import plan_cells, run_matrix
from harness.spec.params import count_params
from harness.spec.presets import resolve_spec
from harness.store import ResultStore

MIB = 2**20


def test_file_pages_come_from_before_the_peak_not_from_the_end():
    # RssFile sampled after compile (30 MiB) and before the memory phase (31 MiB); the end of the
    # cell (not passed in) may read far more, and must not matter
    p = cpu_standin_peak(peak_rss=200 * MIB, compile_hwm=180 * MIB, file_samples=[30 * MIB, 31 * MIB],
                         import_anon=100 * MIB, held=10 * MIB, shmem=0, floor_bytes=12 * MIB,
                         fallback_file=90 * MIB)
    assert p.training_bytes == 59 * MIB and p.compile_bytes == 40 * MIB
    assert not p.floor_applied and p.fields()["standin_method"] == STANDIN_METHOD


def test_floor_applies_and_is_recorded():
    p = cpu_standin_peak(200 * MIB, 150 * MIB, [60 * MIB], 120 * MIB, held=10 * MIB, shmem=0, floor_bytes=12 * MIB)
    assert p.training_bytes == 12 * MIB and p.compile_bytes == 12 * MIB
    f = p.fields()
    assert f["peak_floor_applied"] is True
    assert f["training_peak_unfloored_bytes"] == 10 * MIB and f["compile_peak_unfloored_bytes"] == -40 * MIB


def test_held_bytes_tiles_synthetic_data_to_one_batch():
    assert held_bytes(64, 10, 3, 8) == (256 + 64) * 40
    assert held_bytes(512, 10, 3, 8) == (512 + 512) * 40
    assert held_bytes(64, 10, 0, 8, memmap=True) == 8 * 64 * 40


@pytest.mark.worker
def test_numpy_example_adapter_peak_is_positive_and_at_least_weights_and_state(tmp_path):
    spec = resolve_spec("dense", kmer=3)
    cells = plan_cells(["tests/fixtures/planted.py:NumpyVAE"], [spec], 3, [32], steps=50, timeout_s=300.0)
    (row,) = run_matrix(cells, ResultStore(tmp_path, "peak"), progress=False)
    assert row["status"] == "ok", row.get("failure_message")
    m = row["memory"]
    counts = count_params(spec)
    weights = 4 * (counts.trainable + counts.non_trainable)
    floor = weights_and_state_bytes(counts.trainable, counts.non_trainable)
    assert m["standin_method"] == STANDIN_METHOD
    # the real cause is fixed: the unfloored figures are positive and hold at least the weights
    assert m["training_peak_unfloored_bytes"] >= weights, m
    assert m["compile_peak_unfloored_bytes"] > 0, m
    # and the row never reports less than weights + Adam state; the floor says when it applied
    assert m["peak_bytes"] >= floor and m["compile_peak_rss_bytes"] >= floor
    assert m["peak_floor_applied"] == (m["training_peak_unfloored_bytes"] < floor
                                       or m["compile_peak_unfloored_bytes"] < floor)
