"""The max-batch search finds the exact largest batch, one worker per probe."""

from __future__ import annotations

import pytest

from harness.run.sweep import search_max_batch, sweep_impl
from harness.spec.presets import preset
from harness.spec.schema import canonical_kmer_count
from harness.store import ResultStore


def test_search_is_exact_for_any_limit():
    for limit in (1, 5, 8, 9, 300, 1000, 4096, 65536):
        calls = []

        def probe(b, limit=limit, calls=calls):
            calls.append(b)
            return "ok" if b <= limit else "device_oom"

        max_ok, first_fail, _ = search_max_batch(probe, start=8, max_batch=65536)
        assert max_ok == limit
        assert first_fail == (None if limit == 65536 else limit + 1)
        assert len(calls) <= 2 * 17


def test_search_reports_when_even_batch_one_fails():
    assert search_max_batch(lambda b: "int32_overflow", 8, 1024)[:2] == (None, 1)


@pytest.mark.worker
def test_sweep_against_a_planted_adapter_finds_the_planted_limit(tmp_path):
    store = ResultStore(tmp_path, "sweep")
    spec = preset("dense", canonical_kmer_count(3))
    result = sweep_impl("tests/fixtures/planted.py:FailsAboveVAE", spec, 3, store, {}, start=8, max_batch=1024,
                        timeout_s=60)
    assert result.max_ok == 300 and result.first_failure == 301
    assert result.failure_kind == "device_oom"
    rows = store.rows()
    assert len(rows) == len(result.probes)
    assert {r["sweep"]["outcome"] for r in rows} == {"ok", "device_oom"}
    assert all(r["sweep"]["probe_batch"] == r["batch"] for r in rows)
