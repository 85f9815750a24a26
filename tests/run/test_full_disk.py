"""A full disk loses nothing that was measured (issue 27).

A 64 KiB tmpfs holds the results dir, nearly filled first, so that a row or two fit and the next does not. The
run must stop with one error line (exit 1) naming --resume, print the unstored row as JSON, leave no torn line,
and ``--resume`` on a disk with room must finish the run with every cell once. Needs root (to mount a tmpfs);
skipped with the reason elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from fixtures.paths import FIXTURES, REPO

#: every test here starts a Python process (tests/conftest.py)
pytestmark = pytest.mark.worker

IMPL = str(FIXTURES / "planted.py") + ":NumpyVAE"
BATCHES = "4,8,16,32"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 64 KiB tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _run(results, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "run", "--impl", IMPL, "--kmer", "3", "--batch", BATCHES,
                           "--steps", "3", "--results", str(results), "--run-id", "full", "--no-preflight",
                           "--no-peak", "--no-progress", *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_stops_the_run_keeps_every_row_and_resume_finishes(small_disk, tmp_path):
    filler = small_disk / "filler"
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 20 * 1024))  # leave room for a row or two
    out = _run(small_disk)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    error = lines[-1]
    assert error.startswith("vaebench: error: cannot write a row to") and "No space left on device" in error, error
    assert "--resume --run-id full" in error, error
    unstored = json.loads(lines[-2])  # the measured row, printed whole, before the error line
    assert unstored["status"] == "ok" and unstored["row"] == "numpy"
    stored = (small_disk / "full.jsonl").read_text()
    assert stored.endswith("\n") or stored == ""
    kept = [json.loads(line) for line in stored.splitlines() if line.strip()]  # every line whole
    assert len(kept) < len(BATCHES.split(","))
    assert unstored["batch"] not in {r["batch"] for r in kept}
    # a disk with room: the rows move there and the run goes on where it stopped
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy(small_disk / "full.jsonl", big / "full.jsonl")
    again = _run(big, "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (big / "full.jsonl").read_text().splitlines()]
    assert sorted(r["batch"] for r in rows) == [4, 8, 16, 32] and all(r["status"] == "ok" for r in rows)
