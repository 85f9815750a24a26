"""The run's shared compilation cache, and where a cell's wall time goes.

The cache matters on a GPU (XLA's float32 autotuning costs tens of seconds a
cell), but its logic is the same on a CPU: JAX writes every executable, and a
repeat of the same cell loads it and says so.
"""

from __future__ import annotations

import pytest

from harness.run.compile_cache import cache_dir, compile_cache_env, compile_cached
from harness.run.runner import plan_cells, run_matrix
from harness.run.walltime import wall_breakdown
from harness.spec.presets import resolve_spec
from harness.store import ResultStore


def test_cache_env_points_jax_at_the_run_directory(tmp_path):
    env = compile_cache_env(cache_dir(tmp_path, "r1"), gpu=False, inherited_xla_flags="--foo")
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "cache" / "r1" / "jax")
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert "XLA_FLAGS" not in env  # the GPU autotune flag is only set where a GPU is
    assert (tmp_path / "cache" / "r1" / "jax").is_dir()


def test_on_a_gpu_the_autotune_cache_joins_the_inherited_xla_flags(tmp_path):
    env = compile_cache_env(cache_dir(tmp_path, "r1"), gpu=True, inherited_xla_flags="--xla_foo=1")
    assert env["XLA_FLAGS"].startswith("--xla_foo=1 --xla_gpu_per_fusion_autotune_cache_dir=")
    assert (tmp_path / "cache" / "r1" / "xla-autotune").is_dir()


def test_compile_cached_reads_the_hit_counter():
    assert compile_cached({"compile_cache_hits": 0}, {"compile_cache_hits": 1}) is True
    assert compile_cached({"compile_cache_hits": 2}, {"compile_cache_hits": 2}) is False
    assert compile_cached({}, {"compiles": 3}) is None  # a build that cannot tell


@pytest.mark.worker
@pytest.mark.parametrize("impl", ["flax", "keras-jax"])
def test_a_repeat_loads_the_first_cells_executable(tmp_path, impl):
    """Both JAX builds, two repeats of one cell in one run: the first compiles cold, the second is
    cached. Each build counts cache hits through ``impls.jax_probes``; a build that did not would read
    ``compile_cached: None`` on both rows."""
    pytest.importorskip("keras" if impl.startswith("keras") else "flax")
    spec = resolve_spec("dense", kmer=3)
    store = ResultStore(tmp_path, "cache")
    rows = run_matrix(plan_cells([impl], [spec], 3, [16], repeats=2, steps=10, heap="off"), store, progress=False)
    assert [r["status"] for r in rows] == ["ok", "ok"], [r.get("failure_message") for r in rows]
    assert [r["compile_cached"] for r in rows] == [False, True]
    assert any((tmp_path / "cache" / "cache" / "jax").iterdir())
    assert rows[1]["compile_s"] < rows[0]["compile_s"]
    # the wall-time breakdown covers the worker's life, phase by phase
    wb = rows[0]["wall_breakdown"]
    assert {"process_start", "import", "build", "compile", "steady", "total"} <= set(wb)
    parts = sum(v for k, v in wb.items() if k != "total")
    assert abs(parts - wb["total"]) < 0.05 * wb["total"] + 0.05


def test_wall_breakdown_from_stamped_events():
    events = [{"phase": "build", "at_s": 1.0}, {"phase": "compile", "at_s": 4.0}, {"phase": "steady", "at_s": 5.0},
              {"phase": "steady", "done": 5, "at_s": 6.0}]
    wb = wall_breakdown(events, 9.0, {"import_s": 2.0})
    assert wb == {"process_start": 1.0, "build": 1.0, "compile": 1.0, "steady": 4.0, "import": 2.0, "total": 9.0}
    assert wall_breakdown([], 2.5, None) == {"total": 2.5}


def test_a_leak_confirmation_is_its_own_stretch_not_the_memory_phase():
    events = [{"phase": "build", "at_s": 1.0}, {"phase": "steady", "at_s": 2.0}, {"phase": "memory", "at_s": 4.0},
              {"phase": "confirm", "steps": 150, "max_s": 60.0, "at_s": 5.0}]
    wb = wall_breakdown(events, 20.0, None)
    assert wb["memory"] == 1.0 and wb["confirm"] == 15.0


def test_stats_and_exit_are_their_own_stretches():
    events = [{"phase": "build", "at_s": 1.0}, {"phase": "steady", "at_s": 2.0}, {"phase": "memory", "at_s": 4.0},
              {"phase": "stats", "at_s": 5.0}, {"phase": "exit", "at_s": 5.5}]
    wb = wall_breakdown(events, 6.0, None)
    assert wb["memory"] == 1.0 and wb["stats"] == 0.5 and wb["exit"] == 0.5



def test_a_cache_dir_that_cannot_be_made_stops_the_run_before_any_cell(tmp_path):
    """Issue 27: the first cell's ``mkdir`` of ``RESULTS/cache/RUN`` was a traceback. The runner makes it before
    the peak and any cell, and a path it cannot make is a ``StoreError`` (one line on the command line; ``bench
    run`` refuses a ``RESULTS/cache`` file earlier still, in the adversarial table); a finished run makes none."""
    from harness.store import StoreError

    spec = resolve_spec("dense", kmer=3)
    cells = plan_cells(["tests/fixtures/planted.py:NumpyVAE"], [spec], 3, [4], steps=2, timeout_s=60.0)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "r").write_text("a file where the run's cache dir goes\n")
    with pytest.raises(StoreError, match=r"cache dir .*/cache/r: .*must be a directory vaebench can write"):
        run_matrix(cells, ResultStore(tmp_path, "r"), progress=False, peak=False)
    assert not (tmp_path / "r.jsonl").exists()
    assert run_matrix([], ResultStore(tmp_path, "empty"), progress=False, peak=False) == []
    assert not (tmp_path / "cache" / "empty").exists()
