"""The typed row (``harness.row``): the one loader reads every stored schema, loses nothing, and refuses
a line that is not a row with one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.paths import REPO

from harness.row import SCHEMA_VERSION, Row, RowError, parse_row, upgrade
from harness.store import ResultStore, load_rows

STORED = [REPO / "reports/reference/cpu/k7-2core-cpu/results.jsonl",
          REPO / "tests/fixtures/report_real_torch_cpu.jsonl",
          REPO / "tests/fixtures/rows_before_leak_confirmation.jsonl"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("path", STORED, ids=[p.name for p in STORED])
def test_stored_rows_round_trip_with_no_field_lost(path):
    for raw in _lines(path):
        row = parse_row(raw)
        assert row.to_dict() == upgrade(raw)
        # every key of the old line is still there, with its value, after the upgrade
        assert {k: v for k, v in row.to_dict().items() if k in raw and k != "schema_version"} == \
            {k: v for k, v in raw.items() if k != "schema_version"}


def test_a_schema_1_row_is_upgraded_to_fp32_local_with_energy_absent():
    raw = _lines(STORED[0])[0]
    assert raw["schema_version"] == 1 and "precision" not in raw
    row = parse_row(raw)
    assert row.schema_version == SCHEMA_VERSION and row.upgraded_from == 1
    assert (row.identity.precision, row.identity.launcher) == ("fp32", "local")
    assert row.energy is not None and row.energy.joules_per_step is None and "schema 1" in row.energy.absent_reason
    assert row.timing.step_stats.median_s == raw["step_stats"]["median_s"]
    assert row.flops.counts["per_step"] == raw["flops"]["per_step"]
    tf32 = parse_row({**raw, "settings": {**raw["settings"], "tf32": True}})
    assert tf32.identity.precision == "tf32"


def test_a_failed_row_has_no_timing_and_writes_none_back():
    row = parse_row({"schema_version": 2, "impl": "torch", "batch": 8, "repeat": 0, "status": "failed",
                     "failure_kind": "oom", "failure_message": "out of memory"})
    assert not row.ok and row.timing.step_stats is None and row.median_step_s is None
    assert "step_stats" not in row.to_dict() and row["failure_kind"] == "oom"


@pytest.mark.parametrize("bad,needle", [
    ({"impl": "torch", "batch": "64"}, "'batch' is '64'; expected int"),
    ({"impl": "torch", "batch": True}, "'batch' is True"),
    ({"status": "fine"}, "'status' is 'fine'; expected one of ok, failed, skipped"),
    ({"schema_version": 2, "precision": "fp8"}, "'precision' is 'fp8'"),
    ({"schema_version": 9}, "newer vaebench (schema 9"),
    ({"schema_version": "2"}, "schema_version '2'"),
    ({"memory": [1, 2]}, "'memory' must be an object"),
])
def test_a_line_that_is_not_a_row_is_one_line_naming_the_field(bad, needle):
    with pytest.raises(RowError) as err:
        parse_row(bad)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_loader_names_the_file_and_row_of_a_bad_line(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps({"impl": "torch", "status": "ok"}) + "\n" + json.dumps({"batch": "x"}) + "\n")
    with pytest.raises(RowError, match=r"run.jsonl: row 2: row field 'batch'"):
        load_rows(path)


def test_the_store_writes_schema_2_and_reads_back_typed_rows(tmp_path):
    store = ResultStore(tmp_path, "r1")
    typed = store.append({"cell_key": "k", "impl": "torch", "batch": 8, "repeat": 0, "status": "ok",
                          "step_stats": {"median_s": 0.01, "samples_per_s": 800.0}})
    assert isinstance(typed, Row)
    line = json.loads(store.path.read_text())
    assert line["schema_version"] == 2 and line["precision"] == "fp32" and line["launcher"] == "local"
    (row,) = load_rows(store.path)
    assert isinstance(row, Row) and row.identity.run_id == "r1" and row.median_step_s == 0.01


def test_a_row_the_typed_row_refuses_is_still_written_not_lost(tmp_path):
    store = ResultStore(tmp_path, "r2")
    assert store.append({"cell_key": "k", "impl": "torch", "batch": "eight", "status": "ok"}) is None
    line = json.loads(store.path.read_text())
    assert line["batch"] == "eight" and "'batch' is 'eight'" in line["row_error"]
