"""Interrupting ``python -m bench run`` keeps every finished row; ``--resume`` does the rest.

The run is a real subprocess of the CLI with the numpy-only ``SlowVAE`` (50 ms a step), so
each cell takes a couple of seconds and there is time to stop it between the first row and
the last. Both ways a user stops a run are covered: SIGTERM (a scheduler, ``kill``) and
SIGINT (Ctrl-C).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fixtures.paths import REPO

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

BATCHES = [8, 16, 32, 64]


def bench_cmd(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--impl", "tests/fixtures/planted.py:SlowVAE", "--spec", "dense",
            "--kmer", "3", "--batch", ",".join(map(str, BATCHES)), "--steps", "20", "--results", str(results),
            "--run-id", "t1", "--no-progress", "--no-preflight", "--no-peak", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _default_sigint() -> None:
    # a shell without job control starts background jobs with SIGINT ignored; Ctrl-C must reach this run
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_keeps_rows_and_resume_finishes(tmp_path, sig):
    results = tmp_path / "results"
    jsonl = results / "t1.jsonl"
    proc = subprocess.Popen(bench_cmd(results), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not lines(jsonl):
            assert proc.poll() is None, f"run ended before the first row: {proc.communicate()}"
            assert time.monotonic() < deadline, "no row within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume --run-id t1" in err, err

    kept = lines(jsonl)
    assert 1 <= len(kept) < len(BATCHES), "interrupted too late to test anything"
    rows = [json.loads(line) for line in kept]  # every kept line is whole, valid JSON
    assert all(r["status"] == "ok" and r["run_id"] == "t1" for r in rows), [r["failure_kind"] for r in rows]
    first_keys = [r["cell_key"] for r in rows]

    done = subprocess.run(bench_cmd(results, "--resume", "--json"), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    new_rows = json.loads(done.stdout)
    assert len(new_rows) == len(BATCHES) - len(rows)

    final = [json.loads(line) for line in lines(jsonl)]
    assert len(final) == len(BATCHES)
    assert [r["cell_key"] for r in final[: len(rows)]] == first_keys  # the kept rows are untouched, in place
    assert max(Counter(r["cell_key"] for r in final).values()) == 1
    assert sorted(r["batch"] for r in final) == BATCHES
    assert all(r["status"] == "ok" for r in final)
