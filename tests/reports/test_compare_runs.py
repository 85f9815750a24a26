"""``bench compare`` on real runs: a planted 20% slowdown is flagged, a rerun is not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: every test here starts a Python process or reads what one computed (tests/conftest.py)
pytestmark = pytest.mark.worker

IMPL = "tests/fixtures/planted.py:TunableNumpyVAE"


def _run(tmp_path, run_id: str, slowdown: float) -> None:
    env = dict(os.environ, VAEBENCH_PLANTED_SLOWDOWN=str(slowdown))
    out = subprocess.run([sys.executable, "-m", "bench", "run", "--impl", IMPL, "--spec", "dense", "--kmer", "3",
                          "--batch", "16", "--steps", "200", "--results", str(tmp_path), "--run-id", run_id,
                          "--no-progress", "--no-preflight", "--no-peak"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr


def _compare(tmp_path, a: str, b: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "compare", a, b, "--results-dir", str(tmp_path),
                           "--fail-on-regression"], capture_output=True, text=True)


def test_compare_flags_a_planted_slowdown_and_not_a_rerun(tmp_path):
    _run(tmp_path, "base", 0.0)
    _run(tmp_path, "rerun", 0.0)
    _run(tmp_path, "slower", 0.2)
    same = _compare(tmp_path, "base", "rerun")
    assert same.returncode == 0, same.stdout + same.stderr
    slower = _compare(tmp_path, "base", "slower")
    assert slower.returncode == 1, slower.stdout + slower.stderr
    assert "regression" in (slower.stdout + slower.stderr).lower()
    # stdout is a pipe here, as in `compare A B > f.txt`: every column whole (an 80-column cut read "medi…")
    assert "…" not in slower.stdout and "B median" in slower.stdout and "TunableNumpyVAE" in slower.stdout, \
        slower.stdout


def test_every_format_holds_the_whole_table(tmp_path):
    """``--format csv|md|json``: every cell and every column in full, for a file or another tool (issue 27: a
    piped table had been cut to 80 characters)."""
    import csv
    import io
    import json

    from fixtures.rows import ok_row, write_jsonl

    long_impl = "tests/fixtures/planted.py:AVeryLongPluginClassNameIndeed"
    a = write_jsonl(tmp_path / "a.jsonl", [ok_row(long_impl, 64, 40.0, 0.5), ok_row("flax", 64, 30.0, 0.5)])
    b = write_jsonl(tmp_path / "b.jsonl", [ok_row(long_impl, 64, 50.0, 0.5), ok_row("flax", 64, 30.0, 0.5)])
    out = {fmt: subprocess.run([sys.executable, "-m", "bench", "compare", str(a), str(b), "--format", fmt],
                               capture_output=True, text=True) for fmt in ("csv", "md", "json")}
    assert all(o.returncode == 0 for o in out.values()), {f: o.stderr for f, o in out.items()}
    rows = list(csv.DictReader(io.StringIO(out["csv"].stdout)))
    assert [r["impl"] for r in rows] == [long_impl, "flax"] or [r["impl"] for r in rows] == ["flax", long_impl]
    slow = next(r for r in rows if r["impl"] == long_impl)
    assert slow["A median"] == "40.000 ms" and slow["B median"] == "50.000 ms" and slow["B/A time"] == "1.250"
    md = out["md"].stdout.splitlines()
    assert md[0].startswith("| impl | spec | batch | A median |") and len(md) == 4 and long_impl in out["md"].stdout
    assert {c["impl"] for c in json.loads(out["json"].stdout)} == {long_impl, "flax"}
