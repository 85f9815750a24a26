"""Planted failures through the real runner: every cell ends as exactly one row of its own kind.

One matrix runs every adapter of ``tests/fixtures/planted.py`` in its own worker (a fresh
interpreter each, numpy only), with a good cell before and after the failing ones, so a
crash, hang or memory blow-up of one cell is shown not to touch its neighbours.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from fixtures.paths import FIXTURES

from harness import adapter as adapter_mod
from harness.diagnose.failures import KINDS, classify
from harness.run import runner as runner_mod
from harness.run.runner import plan_cells, run_matrix, run_one
from harness.spec.presets import resolve_spec
from harness.store import ResultStore, read_rows

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

PLANTED = "tests/fixtures/planted.py"
KMER = 3
STEPS = 30
HANG_TIMEOUT_S = 6.0
MEMORY_LIMIT = 512 * 2**20

#: class -> (failure kind, phase the failure happens in or None when not asserted, crashes without a result)
EXPECTED: dict[str, tuple[str, str | None, bool]] = {
    "AbortVAE": ("int32_overflow", "warmup", True),
    "PlainAbortVAE": ("crash_signal", "warmup", True),
    "SegfaultVAE": ("crash_signal", "compile", True),
    "HangVAE": ("timeout", None, False),
    "DeviceOOMVAE": ("device_oom", "compile", False),
    "HostOOMVAE": ("host_oom", "compile", False),
    "MemoryHogVAE": ("host_oom", "compile", False),
    "NaNVAE": ("nan_loss", "warmup", False),
    "Int32VAE": ("int32_overflow", "compile", False),
    "MissingFrameworkVAE": ("framework_missing", "build", False),
    "FrameworkMissingVAE": ("framework_missing", "build", False),
}


def impl(cls_name: str) -> str:
    return f"{PLANTED}:{cls_name}"


def _planted_module():
    spec = importlib.util.spec_from_file_location("planted_fixture", FIXTURES / "planted.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


marker = _planted_module().marker


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """Run the whole planted matrix once; returns (cells, rows from disk)."""
    spec = resolve_spec("dense", kmer=KMER)
    kw = dict(steps=STEPS, timeout_s=120.0)
    cells = plan_cells([impl("NumpyVAE")], [spec], KMER, [8], **kw)
    for cell in plan_cells([impl(name) for name in EXPECTED], [spec], KMER, [8], **kw):
        if cell.impl.endswith(":HangVAE"):
            cell = dataclasses.replace(cell, timeout_s=HANG_TIMEOUT_S)
        cells.append(cell)
    cells += plan_cells([impl("NumpyVAE")], [spec], KMER, [16], **kw)  # a good cell after all the bad ones
    store = ResultStore(tmp_path_factory.mktemp("failures"), "planted")
    returned = run_matrix(cells, store, progress=False, memory_limit_bytes=MEMORY_LIMIT)
    rows = list(read_rows(store.path))
    assert [r["cell_key"] for r in returned] == [r["cell_key"] for r in rows]
    return cells, rows


def row_of(rows: list[dict], cls_name: str, batch: int = 8) -> dict:
    found = [r for r in rows if r["impl"] == impl(cls_name) and r["batch"] == batch]
    assert len(found) == 1, f"{cls_name}: {len(found)} rows"
    return found[0]


def test_one_row_per_cell_in_order(matrix):
    cells, rows = matrix
    assert len(rows) == len(cells)
    counts = Counter(r["cell_key"] for r in rows)
    assert set(counts) == {c.key for c in cells}
    assert max(counts.values()) == 1
    assert [r["cell_key"] for r in rows] == [c.key for c in cells]
    for r in rows:
        assert r["failure_kind"] in KINDS
        assert r["status"] == ("ok" if r["failure_kind"] == "ok" else "failed")
        json.dumps(r)  # every row is plain JSON


@pytest.mark.parametrize("cls_name", list(EXPECTED))
def test_planted_failure_kind(matrix, cls_name):
    _, rows = matrix
    kind, phase, hard_crash = EXPECTED[cls_name]
    row = row_of(rows, cls_name)
    detail = f"{cls_name}: {row['failure_kind']} {row['failure_message']!r} rc={row.get('returncode')} " \
             f"tail={row['stderr_tail'][-3:]}"
    assert row["status"] == "failed", detail
    assert row["failure_kind"] == kind, detail
    assert row["failure_message"], detail
    if phase is not None:
        assert row["failure_phase"] == phase, detail
    assert "step_stats" not in row, detail
    if hard_crash:
        assert row["returncode"] is not None and row["returncode"] < 0, detail
        assert row["stderr_tail"], detail
        assert marker(cls_name) in row["stderr_tail"], detail
    if cls_name not in ("HangVAE", "MemoryHogVAE"):
        # everything that failed on its own left its marker (and any traceback) in the tail
        assert marker(cls_name) in row["stderr_tail"], detail


def test_crash_messages_name_the_cause(matrix):
    _, rows = matrix
    abort = row_of(rows, "AbortVAE")
    assert "work_element_count >= 0" in abort["failure_message"]
    assert "SIGABRT" in row_of(rows, "PlainAbortVAE")["failure_message"]
    assert "SIGSEGV" in row_of(rows, "SegfaultVAE")["failure_message"]
    assert "CUDA out of memory" in row_of(rows, "DeviceOOMVAE")["failure_message"]
    assert "INT32_MAX" in row_of(rows, "Int32VAE")["failure_message"]
    assert "jax_not_installed_xyz" in row_of(rows, "MissingFrameworkVAE")["failure_message"]
    assert "pip install tensorflow-cpu" in row_of(rows, "FrameworkMissingVAE")["failure_message"]
    assert "memory limit" in row_of(rows, "MemoryHogVAE")["failure_message"]
    hang = row_of(rows, "HangVAE")
    assert HANG_TIMEOUT_S <= hang["wall_s"] < HANG_TIMEOUT_S + 30


@pytest.mark.parametrize("cls_name,signal_name,fatal", [("SegfaultVAE", "SIGSEGV", "Segmentation fault"),
                                                        ("PlainAbortVAE", "SIGABRT", "Aborted")])
def test_signal_crash_message_keeps_the_telling_line(matrix, cls_name, signal_name, fatal):
    """Not faulthandler's trailing "Extension modules: numpy, ... (total: N)" line, but the
    fatal error and the first frame of the crashing thread (the planted ``fail``)."""
    _, rows = matrix
    message = row_of(rows, cls_name)["failure_message"]
    assert signal_name in message, message
    detail = message.split(": ", 1)[-1]
    assert not detail.startswith("Extension modules"), message
    assert "Extension modules" not in message, message
    assert f"Fatal Python error: {fatal}" in message, message
    assert 'File "' in message and ", line " in message, message


def test_good_cells_intact_around_failures(matrix):
    _, rows = matrix
    good = [row_of(rows, "NumpyVAE", 8), row_of(rows, "NumpyVAE", 16)]
    assert rows[0] is good[0] and rows[-1] is good[1]
    for row in good:
        assert row["status"] == "ok" and row["failure_kind"] == "ok", row["failure_message"]
        assert row["failure_phase"] is None
        assert row["returncode"] == 0
        stats = row["step_stats"]
        assert stats["median_s"] > 0 and math.isfinite(stats["median_s"])
        assert math.isfinite(row["final_loss"])
        assert row["steps"] == STEPS
        assert len(row["host"]["rss_anon"]) > STEPS
        assert row["leak"]["verdict"] != "leak"  # NumpyVAE keeps nothing between steps
        assert row["frameworks_loaded"] == []  # numpy only: no framework crept into the worker
        assert row["fingerprint"]["frameworks"] == row["versions"]


# ------------------------------------------------------------- built-in rows without their framework


def test_builtin_row_without_framework_is_a_row_not_a_crash(monkeypatch, tmp_path):
    """The parent sees a built-in row's framework is absent and writes framework_missing, spawning nothing."""
    monkeypatch.setattr(runner_mod, "is_installed", lambda name: name != "keras-tensorflow")

    def no_worker(*args, **kwargs):
        raise AssertionError("a worker was started for a row whose framework is missing")

    monkeypatch.setattr(runner_mod, "run_worker", no_worker)
    spec = resolve_spec("dense", kmer=KMER)
    store = ResultStore(tmp_path, "missing")
    rows = run_matrix(plan_cells(["keras-tensorflow"], [spec], KMER, [8, 16], steps=5), store, progress=False)
    assert [r["failure_kind"] for r in rows] == ["framework_missing", "framework_missing"]
    assert all("pip install" in r["failure_message"] and "tensorflow" in r["failure_message"] for r in rows)
    assert len(store.rows()) == 2


def test_builtin_row_missing_in_worker(monkeypatch):
    """If the worker (not the parent) finds the framework absent, load_adapter_class raises
    FrameworkMissing and the classifier names it framework_missing."""
    real = adapter_mod.importlib.util.find_spec
    monkeypatch.setattr(adapter_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorflow" else real(name, *a))
    assert not adapter_mod.is_installed("keras-tensorflow")
    with pytest.raises(adapter_mod.FrameworkMissing, match="pip install keras tensorflow"):
        adapter_mod.load_adapter_class("keras-tensorflow")
    try:
        adapter_mod.load_adapter_class("keras-tensorflow")
    except adapter_mod.FrameworkMissing as exc:
        result = {"status": "error", "error_type": type(exc).__name__, "message": str(exc)}
    failure = classify(result, 0, [], phase="build")
    assert failure.kind == "framework_missing"
    assert "tensorflow" in failure.message


def test_run_one_builtin_missing(monkeypatch):
    monkeypatch.setattr(runner_mod, "is_installed", lambda name: False)
    cell = plan_cells(["flax"], [resolve_spec("dense", kmer=KMER)], KMER, [8])[0]
    row = run_one(cell, {})
    assert row["status"] == "failed" and row["failure_kind"] == "framework_missing"
    assert "jax flax optax" in row["failure_message"]


def test_fixture_path_exists():
    assert Path(PLANTED).is_file(), "run pytest from the repository root"


@pytest.mark.worker
def test_a_plugin_that_forks_a_child_ends_with_its_cell_and_leaves_nothing(monkeypatch):
    """Issue 27: a plug-in forking ``sleep 600`` in train_step held its cell until --timeout, and the child lived
    on. The child holds the worker's stdout; once the worker exits the parent waits LEFTOVER_GRACE_S, then kills
    the worker's process group: the cell ends within its own time plus a few seconds, and no sleep remains."""
    import subprocess
    import time

    marker = "600.4242"  # a sleep argument nothing else on the machine uses
    monkeypatch.setenv("VAEBENCH_PLANTED_SLEEP", marker)
    spec = resolve_spec("dense", kmer=3)
    start = time.perf_counter()
    row = run_one(runner_mod.Cell(str(FIXTURES / "planted.py") + ":ForkingVAE", spec, 3, 4, steps=5, timeout_s=120,
                                  heap="off"), {})
    took = time.perf_counter() - start
    assert row["status"] == "ok", (row.get("failure_kind"), row.get("failure_message"))
    assert took < 60, took
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True, text=True).stdout.split()
    assert not left, f"the plug-in's child outlived its cell: pids {left}"
