"""``bench compare``'s formats: every cell and every column in full, whatever reads it."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: the test here starts a Python process (tests/conftest.py)
pytestmark = pytest.mark.worker


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
