"""How long the parts a user waits on take: preflight, a report, loading stored results.

These are benchmarks, not tests of behaviour: pytest-benchmark times each in
this process and prints its table. ``nox -s microbench`` runs them; the unit
tests never assert a speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.diagnose.preflight import preflight
from harness.spec.presets import PRESETS, preset
from harness.spec.schema import canonical_kmer_count
from harness.store import load_results, load_rows
from reports.build import build_report

REFERENCE_RUN = Path(__file__).resolve().parents[2] / "reports" / "reference" / "cpu" / "k7-2core-cpu" / "results.jsonl"


def test_preflight_every_preset_at_k7(benchmark):
    """Every tensor of the forward and backward pass of each preset at k=7, batch 512."""
    length = canonical_kmer_count(7)
    specs = [preset(name, length) for name in PRESETS]
    reports = benchmark(lambda: [preflight(spec, 512) for spec in specs])
    assert len(reports) == len(PRESETS)


def test_build_report_from_a_stored_run(benchmark, tmp_path):
    """Markdown, HTML and every plot of the committed CPU reference run."""
    rounds = iter(range(1000))
    path = benchmark.pedantic(lambda: build_report([REFERENCE_RUN], out_root=tmp_path, run_id=f"r{next(rounds)}"),
                              rounds=3, iterations=1)
    assert (Path(path) / "report.md").is_file()


@pytest.fixture(scope="module")
def ten_thousand_rows(tmp_path_factory) -> Path:
    """A results file of 10,000 rows made from the reference run's rows (each a real stored row)."""
    rows = load_rows([REFERENCE_RUN])
    path = tmp_path_factory.mktemp("rows") / "big.jsonl"
    with open(path, "w") as f:
        for i in range(10_000):
            row = dict(rows[i % len(rows)], cell_key=f"k{i:05d}")
            f.write(json.dumps(row) + "\n")
    return path


def test_load_rows_of_10k(benchmark, ten_thousand_rows):
    rows = benchmark(load_rows, [ten_thousand_rows])
    assert len(rows) == 10_000


def test_load_results_dataframe_of_10k(benchmark, ten_thousand_rows):
    frame = benchmark.pedantic(load_results, args=([ten_thousand_rows],), rounds=3, iterations=1)
    assert len(frame) == 10_000
