"""The answer names the precision (issue 22): bf16 is recommended only where it trains more samples per second
and its curve against float32 ends where float32's does; otherwise the fp32 answer stands and says why."""

from __future__ import annotations

import pytest
from fixtures.rows import ok_row

from reports.build import build_report


def _rows(bf16_ms: float) -> list[dict]:
    rows = []
    for impl, ms in (("torch", 10.0), ("flax", 12.0)):
        rows.append(ok_row(impl, 64, ms, 0.1, schema_version=2, precision="fp32"))
        rows.append(ok_row(impl, 64, bf16_ms if impl == "flax" else 30.0, 0.1, spec_hash="hdense-bf16",
                           precision="bf16", cell_key=f"{impl}64bf16", schema_version=2))
    return rows


def _curve(impl: str, precision: str, passed: bool, final: float, parted: int | None) -> dict:
    label = impl if precision == "fp32" else f"{impl} {precision}"
    return {"run_id": "20261123-170000-abcdef", "spec_name": "dense", "kmer": 5, "batch": 64, "steps": 100,
            "precision": precision, "curve": {"impl": label, "loss": [1.0] * 100, "probe_steps": [0, 50, 100],
                                              "recon": [3.0, 2.0, 1.0], "kl": [1.0] * 3, "kl_max_dim": [0.5] * 3,
                                              "grad_norm": [1.0] * 3},
            "verdict": {"impl": label, "reference": "torch", "precision": precision, "passed": passed,
                        "final_recon": final, "parted_at": parted}, "tolerances": {}}


def _answer(tmp_path, rows, curves) -> str:
    out = build_report(rows_path(tmp_path, rows), tmp_path / "out", curves=curves, plots=False)
    return (out / "report.md").read_text().split("\n\n")[2]


def rows_path(tmp_path, rows):
    from fixtures.rows import write_jsonl

    return str(write_jsonl(tmp_path / "rows.jsonl", rows))


@pytest.mark.parametrize("passed", [True, False])
def test_a_faster_bf16_is_the_answer_only_where_its_curve_ends_where_fp32s_does(tmp_path, passed):
    curves = [_curve("flax", "bf16", passed, 0.002 if passed else 0.05, 12)]
    text = _answer(tmp_path, _rows(4.0), curves)
    if passed:
        assert text.startswith("**dense, k=5** on NVIDIA H100 80GB HBM3: use **flax at batch 64 in bf16**"), text
        assert "3.00× its fp32 samples/s" in text and "trains as fp32 does: final recon 0.20% from fp32's" in text
        assert "parted from fp32's curve at step 12" in text and "In fp32: use **torch at batch 64**" in text
    else:
        assert text.startswith("**dense, k=5** on NVIDIA H100 80GB HBM3: use **torch at batch 64**"), text
        assert "is not recommended: it trains differently: final recon 5.00% from fp32's" in text


def test_a_bf16_without_curves_is_never_recommended_silently(tmp_path):
    text = _answer(tmp_path, _rows(4.0), [])
    assert text.startswith("**dense, k=5** on NVIDIA H100 80GB HBM3: use **torch at batch 64**"), text
    assert "no bf16 training curve in this run shows that it trains as fp32 does" in text


def test_a_slower_bf16_says_so(tmp_path):
    text = _answer(tmp_path, _rows(40.0), [_curve("torch", "bf16", True, 0.001, None)])
    assert "In bf16, the best is **torch at batch 64 in bf16**" in text and "slower than fp32's best here" in text, text
    assert "0.33× its fp32 samples/s" in text and "it trains as fp32 does" in text


def test_an_mfu_above_100_percent_is_a_finding_not_a_figure():
    from reports.section_environment import peak_findings

    rows = [ok_row("torch", 64, 10.0, 0.1, mfu={"step": 1.3, "device_step": 1.3}, precision="bf16", schema_version=2),
            ok_row("flax", 64, 10.0, 0.1, mfu={"step": 0.4, "device_step": 0.4})]
    found = [f for f in peak_findings(rows) if f.startswith("MFU above 100%")]
    assert found == [found[0]] and "torch (bf16, 130%)" in found[0] and "flax" not in found[0]
    assert not [f for f in peak_findings(rows[1:]) if f.startswith("MFU above")]
