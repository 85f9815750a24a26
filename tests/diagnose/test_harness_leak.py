"""The leak verdict end to end, in real workers, on the numpy-only ``NumpyVAE``.

Positive controls: ``inject_leak_bytes`` (``--inject-leak``) keeps 1 MiB or 64 KiB of touched
memory per step, and the verdict must say "leak" with the right slope. Negative controls: no
injection, and a ``.npy`` memmap streamed once through the cell. The memmap's pages land in
RssFile (page cache the kernel can drop), so the verdict on RssAnon must stay "no leak" while
``host.file_growth_bytes`` reports the file pages apart. The memmap cells also run under a
``memory_limit_bytes`` below anon + file RSS: the guard must not take page cache for a host OOM.

The 1 GiB memmap variant takes 15-25 s here (6-8 s to write the file, 10-13 s in the worker); it is marked
``slow`` but still part of the default run; skip it with ``-m "not slow"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness.run.runner import plan_cells, run_matrix
from harness.run.schedule import warmup_steps
from harness.spec.presets import resolve_spec
from harness.spec.schema import canonical_kmer_count
from harness.store import ResultStore

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

IMPL = "tests/fixtures/planted.py:NumpyVAE"
MIB = 2**20


def run_cells(tmp_path: Path, name: str, memory_limit_bytes: int | None = None, **kw) -> list[dict]:
    kmer = kw.pop("kmer")
    batches = kw.pop("batches")
    spec = resolve_spec("dense", kmer=kmer)
    cells = plan_cells([IMPL], [spec], kmer, batches, timeout_s=300.0, **kw)
    return run_matrix(cells, ResultStore(tmp_path, name), progress=False, memory_limit_bytes=memory_limit_bytes)


def ok(row: dict) -> dict:
    assert row["status"] == "ok", f"{row['failure_kind']}: {row['failure_message']} {row['stderr_tail'][-5:]}"
    return row


# ------------------------------------------------------------------------- injected leaks


@pytest.fixture(scope="module")
def injected(tmp_path_factory) -> dict[int, dict]:
    """One cell each with 1 MiB, 64 KiB and no injected leak per step (200 steps)."""
    tmp = tmp_path_factory.mktemp("leak")
    rows = {}
    for leak in (MIB, 64 * 1024, 0):
        (row,) = run_cells(tmp, f"leak{leak}", kmer=3, batches=[16], steps=200, inject_leak_bytes=leak)
        rows[leak] = ok(row)
    return rows


@pytest.mark.parametrize("leak, tolerance", [(MIB, 0.15), (64 * 1024, 0.25)], ids=["1MiB", "64KiB"])
def test_injected_leak_is_found_with_its_slope(injected, leak, tolerance):
    verdict = injected[leak]["leak"]
    assert verdict["verdict"] == "leak", verdict["reason"]
    assert verdict["slope_bytes_per_batch"] == pytest.approx(leak, rel=tolerance), verdict
    assert verdict["injected_bytes_per_batch"] == leak
    assert injected[leak]["inject_leak_bytes"] == leak  # the row says it was a positive control
    assert verdict["cause"]["cause"] in ("native", "python heap")


def test_no_injection_no_leak(injected):
    row = injected[0]
    verdict = row["leak"]
    assert verdict["verdict"] == "no leak", verdict["reason"]
    assert abs(verdict["slope_bytes_per_batch"]) < 8192
    assert verdict["injected_bytes_per_batch"] is None
    assert row["host"]["anon_growth_bytes"] < 4 * MIB


# ------------------------------------------------------------------- memmap negative control


def write_profiles(path: Path, rows: int, k: int = 5, block_rows: int = 4096, seed: int = 0) -> None:
    """A float32 ``.npy`` of ``rows`` valid k-mer frequency rows (non-negative, each summing to 1)."""
    width = canonical_kmer_count(k)
    rng = np.random.default_rng(seed)
    block = rng.random((block_rows, width), dtype=np.float32)
    block /= block.sum(axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    chunk = np.tile(block, (max(1, 65536 // block_rows), 1))
    for start in range(0, rows, len(chunk)):
        n = min(len(chunk), rows - start)
        out[start:start + n] = chunk[:n]
    out.flush()
    del out


def check_memmap_row(row: dict, file_bytes: int, memory_limit: int) -> dict[str, float]:
    host, verdict = row["host"], row["leak"]
    assert verdict["verdict"] == "no leak", verdict["reason"]
    steady = host["steady_from"]
    anon, file_ = host["rss_anon"], host["rss_file"]
    # the file pages were counted apart from anonymous memory
    assert host["file_growth_bytes"] > 0
    assert host["file_growth_bytes"] == file_[-1] - file_[steady]
    assert host["file_growth_bytes"] > 0.4 * file_bytes, host["file_growth_bytes"]
    # anon RSS only moves by batch buffers the allocator keeps or returns (up or down), far less than the file
    assert host["anon_growth_bytes"] < 0.25 * host["file_growth_bytes"], host["anon_growth_bytes"]
    assert file_[-1] - file_[0] > 0.8 * file_bytes  # the whole file was mapped in by the end
    # the guard ran with a limit that anon RSS stays under but anon + file RSS passes
    assert max(anon) < memory_limit < max(a + f for a, f in zip(anon, file_, strict=True)), \
        (max(anon), max(file_))
    return {"anon_slope_bytes_per_batch": verdict["slope_bytes_per_batch"],
            "anon_growth_bytes": host["anon_growth_bytes"], "file_growth_bytes": host["file_growth_bytes"],
            "rss_file_end_bytes": file_[-1], "worker_wall_s": row["wall_s"]}


def test_memmap_streaming_is_not_a_leak(tmp_path, record_property):
    rows, batch, steps = 65536, 2048, 40  # 128 MiB; 45 batches of 2048 rows read the file once and then some
    path = tmp_path / "profiles.npy"
    write_profiles(path, rows)
    limit = 160 * MIB
    (row,) = run_cells(tmp_path, "memmap", kmer=5, batches=[batch], steps=steps, data=str(path),
                       memory_limit_bytes=limit)
    size = path.stat().st_size
    path.unlink()
    figures = check_memmap_row(ok(row), size, limit)
    record_property("memmap_128MiB", figures)


@pytest.mark.slow
def test_memmap_1gib_streamed_is_not_a_leak(tmp_path, record_property):
    """1 GiB (524288 x 512 float32) streamed whole: batch 4096, 128 steps (+ compile and warm-up)."""
    rows, batch, steps = 524288, 4096, 128
    path = tmp_path / "profiles_1gib.npy"
    try:
        t0 = time.perf_counter()
        write_profiles(path, rows)
        write_s = time.perf_counter() - t0
        assert path.stat().st_size >= 2**30
        limit = 512 * MIB
        t0 = time.perf_counter()
        (row,) = run_cells(tmp_path, "memmap1g", kmer=5, batches=[batch], steps=steps, data=str(path),
                           memory_limit_bytes=limit)
        run_s = time.perf_counter() - t0
        warmup = warmup_steps(steps)  # harness.run.cell's default warm-up steps
        streamed = (1 + warmup + steps) * batch
        figures = check_memmap_row(ok(row), path.stat().st_size, limit)
        figures.update(write_s=write_s, run_s=run_s, rows_streamed=streamed)
        record_property("memmap_1GiB", figures)
        print("memmap 1 GiB:", figures)
        assert streamed >= rows
    finally:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------- the CPU peak


def test_compile_scratch_is_reported_apart_from_the_training_peak(tmp_path):
    """The CPU stand-in for device memory covers the training steps, not the compile step.

    ``CompileScratchVAE`` touches 256 MiB on its first step and frees it into glibc's heap,
    which keeps it resident: without the trim and the VmHWM restart before the memory phase,
    the training peak would read 256 MiB for a model that holds a few."""
    spec = resolve_spec("dense", kmer=3)
    cells = plan_cells(["tests/fixtures/planted.py:CompileScratchVAE"], [spec], 3, [16], timeout_s=300.0, steps=40)
    (row,) = run_matrix(cells, ResultStore(tmp_path, "scratch"), progress=False)
    memory = ok(row)["memory"]
    assert memory["compile_peak_rss_bytes"] >= 200 * MIB, memory  # 256 MiB less the harness's own share
    assert memory["heap_trimmed"] and memory["peak_rss_restarted"] and memory["memory_phase_steps"] == 3, memory
    assert memory["peak_bytes"] == memory["training_peak_rss_bytes"] < 64 * MIB, memory
