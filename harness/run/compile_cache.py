"""A compilation cache shared by a run's cells, so that cold compiles are paid once.

JAX compiles each (model, batch) once per process, and on a GPU exact float32
makes XLA's GEMM autotuner search for tens of seconds (flax dense k=7: 30.6 s
at B=512 on an H200). Each cell runs in a fresh process, so without a cache
every repeat pays it again. The runner points every worker at one directory
under the results:

* ``JAX_COMPILATION_CACHE_DIR``: JAX's persistent cache of whole executables
  (a repeat of the same impl, spec and batch loads its executable instead of
  compiling); every compile is written, however short
  (``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0``), so the logic is the same on CPU;
* on a GPU, XLA's per-fusion autotuning cache, which reaches further: a GEMM
  of the same shape autotuned by one impl (flax) is not searched again by
  another (keras-jax).

The first cell of each (impl, spec, batch) still compiles cold and reports it;
a cell whose executable came from the cache says so (``compile_cached``), so a
cached ``compile_s`` is never read as a cold one.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.store import CACHE_DIRNAME  # the cache lives beside the run's rows: RESULTS/cache/RUN_ID/


def cache_dir(results_dir: str | Path, run_id: str) -> Path:
    return Path(results_dir) / CACHE_DIRNAME / run_id


def make_cache_dir(results_dir: str | Path, run_id: str) -> Path:
    """The run's cache dir, created before any cell runs: a path that cannot be made (``RESULTS/cache/RUN`` a
    file, a full disk) is then one line before a worker starts, not a traceback at the first cell.

    Raises ``OSError`` with the path and the fix in its message."""
    path = cache_dir(results_dir, run_id)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OSError(f"cannot make the run's compilation cache dir {path}: {exc.strerror or exc}; each part of "
                      f"that path must be a directory vaebench can write (or pick another --results)") from exc
    return path


def compile_cache_env(directory: Path, gpu: bool, inherited_xla_flags: str | None = None) -> dict[str, str]:
    """Environment for a worker that shares ``directory``'s caches (created here)."""
    jax_dir = directory / "jax"
    jax_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(jax_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    }
    if gpu:
        tune_dir = directory / "xla-autotune"
        tune_dir.mkdir(parents=True, exist_ok=True)
        flags = inherited_xla_flags if inherited_xla_flags is not None else os.environ.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_gpu_per_fusion_autotune_cache_dir={tune_dir}".strip()
    return env


def compile_cached(counters_before: dict[str, int], counters_after: dict[str, int]) -> bool | None:
    """Whether the compile step loaded its executable from the cache (None: the build cannot tell)."""
    if "compile_cache_hits" not in counters_after:
        return None
    return counters_after["compile_cache_hits"] > counters_before.get("compile_cache_hits", 0)
