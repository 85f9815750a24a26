"""The runtime footprints workers measured on this machine, for the memory estimate's constant.

Each CPU worker measures its framework's footprint past the import before it builds the model
(``harness.run.phases.footprint``) and records it here, in ``footprints.json`` of the machine's
cache (``$VAEBENCH_CACHE_DIR``, as the matmul peaks). The estimate (``harness.diagnose.memory``)
takes its constant from the latest record for the impl, this CPU and these framework versions;
where there is none yet, from the median the fit's own workers measured (on the fit's machine, which
the estimate then names). Each record keeps the last few readings, so a reader sees their spread.

Framework-free: json and the standard library.
"""

from __future__ import annotations

import json
import os
import statistics
from importlib import metadata
from pathlib import Path

from harness.measure.fingerprint import cpu_model
from harness.measure.peak import default_cache_dir, read_json_object

FILE = "footprints.json"
#: readings kept per key, the newest last
KEEP = 8
#: the distributions whose versions key a footprint
STACK = ("torch", "jax", "jaxlib", "flax", "optax", "keras", "tensorflow", "tensorflow-cpu")


def footprint_path() -> Path:
    return default_cache_dir() / FILE


def installed_stack() -> dict[str, str]:
    """The installed versions of every framework distribution, from package metadata (no import): the
    worker and the parent read the same, whichever framework each has loaded."""
    out = {}
    for dist in STACK:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def footprint_key(impl: str, stack: dict[str, str] | None = None) -> str:
    """impl | CPU model | installed framework versions: a footprint holds only where all three match."""
    stack = installed_stack() if stack is None else stack
    return f"{impl}|{cpu_model()}|" + ",".join(f"{k}={stack[k]}" for k in sorted(stack))


def record_footprint(impl: str, footprint_bytes: int) -> None:
    """Add one worker's reading (best effort: a cache that cannot be written costs the next estimate its local
    constant, never the cell)."""
    path = footprint_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_json_object(path)
        key = footprint_key(impl)
        data[key] = (list(data.get(key) or []) + [int(footprint_bytes)])[-KEEP:]
        tmp = path.with_name(f".{FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError:
        return


def local_footprint(impl: str) -> int | None:
    """The median of this machine's readings for ``impl`` at the installed versions; None where there are none."""
    readings = read_json_object(footprint_path()).get(footprint_key(impl)) or []
    readings = [int(r) for r in readings if isinstance(r, (int, float))]
    return int(statistics.median(readings)) if readings else None
