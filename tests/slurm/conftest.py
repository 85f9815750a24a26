"""The one-node Slurm the Slurm tests submit to: started by ``tests/slurm/start.sh`` (``.ci/run`` runs it before
the suite, as root), found here by ``sinfo``. Where no node answers idle, every test that asks for ``slurm`` is
skipped with the reason, so the suite passes on a machine that cannot run Slurm (not root, no apt)."""

from __future__ import annotations

import functools
import shutil
import subprocess

import pytest
from fixtures.paths import REPO

START = REPO / "tests" / "slurm" / "start.sh"


@functools.lru_cache(maxsize=1)
def _node_state() -> str | None:
    """Why there is no usable node (one line), or None when sinfo shows one idle or partly used; asked once per
    session (a controller that is down makes each sinfo wait seconds)."""
    for tool in ("sinfo", "sbatch", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; run {START} as root to install and start a one-node Slurm"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo did not answer ({exc}); run {START} as root"
    states = set(out.stdout.split())
    if out.returncode != 0 or not states & {"idle", "mix", "alloc"}:
        return f"no Slurm node is up (sinfo: {out.stdout.strip() or out.stderr.strip()}); run {START} as root"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed in this Python (pip install submitit)"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    """Skip the test unless a one-node Slurm answers here."""
    why = _node_state()
    if why:
        pytest.skip(why)
