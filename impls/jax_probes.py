"""What JAX itself reports about a process: its XLA compiles, its compilation-cache hits, its allocator.

One module for every build that runs on JAX (``impls.flax_vae`` and ``impls.keras_vae`` on the jax
backend), so a figure means the same in each of their rows. Both listeners are registered once per
process, at the first import, however many builds import this module:

* every jit cache miss anywhere in the process (the train step, eval, eager ops on new shapes) is one
  XLA compile, and each compiled executable holds device memory, which is what the leak attribution
  needs;
* an executable that came from JAX's persistent compilation cache (which the harness points at a
  directory shared by a run's cells) is a cache hit, so that cell's ``compile_s`` is not a cold one
  (``harness.run.compile_cache.compile_cached``).
"""

from __future__ import annotations

from typing import Any

import jax

#: the event JAX records around every XLA backend compilation (jax/_src/dispatch.py)
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
#: recorded when an executable comes from the persistent compilation cache (jax/_src/compiler.py)
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"

_compiles = 0
_cache_hits = 0


def _count_compile(event: str, duration_secs: float, **_: Any) -> None:
    global _compiles
    if event == COMPILE_EVENT:
        _compiles += 1


def _count_cache_hit(event: str, **_: Any) -> None:
    global _cache_hits
    if event == CACHE_HIT_EVENT:
        _cache_hits += 1


jax.monitoring.register_event_duration_secs_listener(_count_compile)
jax.monitoring.register_event_listener(_count_cache_hit)


def counters() -> dict[str, int]:
    """``compiles``: XLA compilations in this process so far; ``compile_cache_hits``: those of them
    loaded from the persistent compilation cache instead."""
    return {"compiles": _compiles, "compile_cache_hits": _cache_hits}


def on_gpu() -> bool:
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def device_memory() -> dict[str, int | None]:
    """The first device's allocator figures, in bytes; empty on a CPU, whose device keeps none."""
    stats = jax.devices()[0].memory_stats()  # None on CPU
    if not stats:
        return {}
    return {
        "peak_bytes": stats.get("peak_bytes_in_use"),
        "bytes_in_use": stats.get("bytes_in_use"),
        "reserved_bytes": stats.get("bytes_reserved"),
        "bytes_limit": stats.get("bytes_limit"),
    }
