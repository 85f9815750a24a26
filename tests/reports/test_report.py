"""Tests for reports.build and reports.compare on small synthetic stored runs (and one real stored row)."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from fixtures.browser import INSTALL_HINT, find_chromium
from fixtures.paths import FIXTURES, REPO
from fixtures.rows import MIB, MS, failed_row, ok_row, synthetic_run, write_jsonl

from harness.measure.stats import summarize_steps
from harness.store import load_rows
from reports.build import build_report
from reports.compare import compare_runs, print_comparison
from reports.recommend import recommend

FIXTURE = FIXTURES / "report_real_torch_cpu.jsonl"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    results = write_jsonl(tmp / "20261123-170000-abcdef.jsonl", synthetic_run())
    params = {"dense": {"expected": {"trainable": 1000, "non_trainable": 20},
                        "torch": {"trainable": 1000, "non_trainable": 20},
                        "flax": {"trainable": 1000, "non_trainable": 20},
                        "keras-jax": {"trainable": 1002, "non_trainable": 20}}}
    out = build_report([results], out_root=tmp / "out", params_check=params)
    return out


# --------------------------------------------------------------------------- report files


def test_report_files_and_sections(built):
    md = (built / "report.md").read_text()
    assert (built / "report.html").exists()
    assert (built.parent / "index.md").exists() and (built.parent / "index.html").exists()
    for header in ("## Environment", "## Results", "## Recommendation", "## Diagnosis", "## Sweep map"):
        assert header in md, header
    # the plots sit beside their tables, in Results, not in a section at the end; the summary figure comes first
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    for prefix in ("step_time_", "memory_", "rss_"):
        assert f"](plots/{prefix}" in results, prefix
    assert md.index("(plots/summary.png)") < md.index("## Recommendation")
    pngs = sorted(p.name for p in (built / "plots").glob("*.png"))
    assert any(p.startswith("step_time_") for p in pngs)
    assert any(p.startswith("rss_") for p in pngs)
    assert any(p.startswith("memory_") for p in pngs)
    assert any(p.startswith("sweep_") for p in pngs)
    for p in (built / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(plots/{p.name})" in md  # every plot is linked from the Markdown
    # environment: device, pinned settings and env, commit
    assert "NVIDIA H100 80GB HBM3" in md and "4c0d0788aded3e251a6d4047a490050712d335cb" in md
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" in md and "tf32" in md and "pinned" in md
    # table: params verdicts, preflight ratio 660/600 = 1.10
    assert "1,000 / 20 equal" in md and "1,002 / 20 differs" in md
    assert "| 1.10 |" in md
    # diagnosis: leak cause/fix, failure advice, preflight flag
    assert "stop keeping loss tensors in a list" in md
    assert "device_oom" in md and "lower the batch size" in md
    assert "a tensor passed 2^31 elements" in md
    assert "encoder.conv1" in md and "3,000,000,000" in md
    assert "keep_loss_tensors" in md
    # sweep summary
    assert "| torch | ok | ok | device_oom | device_oom | 128 | 256 (device_oom) |" in md
    index = (built.parent / "index.md").read_text()
    assert "20261123-170000-abcdef/report.md" in index and "H100" in index


def test_report_recommendations_in_markdown(built):
    md = (built / "report.md").read_text()
    assert "**Use torch**. **torch** is fastest" in md
    assert "**Use keras-jax** (a tie). Tie between torch and keras-jax" in md
    assert "**Use flax**" in md
    meta = json.loads((built / "meta.json").read_text())
    got = {(r["spec"], r["batch"]): (r["choice"], r["tie"]) for r in meta["recommendations"]}
    assert got == {("dense", 64): ("torch", []), ("dense", 256): ("flax", []),
                   ("conv", 64): ("keras-jax", ["torch", "keras-jax"])}


def test_html_is_well_formed_and_self_contained(built):
    text = (built / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<title>vaebench report 20261123-170000-abcdef</title>" in text
    assert 'src="data:image/png;base64,' in text and 'src="plots/' not in text

    class Checker(HTMLParser):
        VOID = {"meta", "img", "br", "hr", "link", "input"}

        def __init__(self):
            super().__init__()
            self.stack: list[str] = []
            self.errors: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag not in self.VOID:
                self.stack.append(tag)

        def handle_endtag(self, tag):
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            else:
                self.stack.pop()

    c = Checker()
    c.feed(text)
    assert not c.errors and not c.stack, (c.errors, c.stack)


def test_report_from_real_stored_row(tmp_path):
    out = build_report([FIXTURE], out_root=tmp_path)
    md = (out / "report.md").read_text()
    assert out.name == "20261123-162255-b980c9"
    assert "peak RSS*" in md and "AMD EPYC" in md and "**Use torch**" in md
    assert "only eligible impl" in md


def test_params_check_accepts_params_report_dicts(tmp_path):
    report = {"spec": "dense", "expected": {"trainable": 10, "non_trainable": 2}, "equal": False,
              "rows": [{"impl": "torch", "trainable": 10, "non_trainable": 2, "error": None},
                       {"impl": "flax", "trainable": 11, "non_trainable": 2, "error": None}]}
    rows = [ok_row("torch", 64, 10.0, 0.2), ok_row("flax", 64, 20.0, 0.2)]
    out = build_report(rows, out_root=tmp_path, run_id="p", params_check=[report], plots=False)
    md = (out / "report.md").read_text()
    assert "| torch | 10 / 2 equal |" in md and "| flax | 11 / 2 differs |" in md


def test_index_lists_every_run(tmp_path):
    rows = synthetic_run()[:3]
    a = build_report(rows, out_root=tmp_path, run_id="run-a", plots=False)
    b = build_report(rows, out_root=tmp_path, run_id="run-b", plots=False)
    index = (tmp_path / "index.md").read_text()
    assert "run-a/report.md" in index and "run-b/report.md" in index
    assert "run-a/report.html" in (tmp_path / "index.html").read_text()
    assert a.name == "run-a" and b.name == "run-b"


def test_load_rows_accepts_dirs_files_and_rejects_unknown(tmp_path):
    write_jsonl(tmp_path / "x.jsonl", synthetic_run()[:2])
    assert len(load_rows(tmp_path)) == 2
    assert len(load_rows([tmp_path / "x.jsonl"])) == 2
    with pytest.raises(FileNotFoundError):
        load_rows(["no-such-run-id"], results_dir=tmp_path)


def test_rows_without_optional_keys_do_not_crash(tmp_path):
    row = ok_row("torch", 32, 5.0, 0.1)
    for key in ("host", "leak", "memory", "fingerprint", "settings", "scenario"):
        row.pop(key)
    out = build_report([row, failed_row("flax", 32, "error", "boom")], out_root=tmp_path, run_id="bare", plots=False)
    assert "## Recommendation" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- recommend


def test_fastest_wins_when_cis_are_separate():
    rec = recommend([ok_row("torch", 64, 10.0, 0.2), ok_row("flax", 64, 12.0, 0.2), ok_row("keras-jax", 64, 15, 1)])
    assert rec.choice == "torch" and rec.tie == []
    assert "1.20×" in rec.reason and "flax" in rec.reason


def test_tie_declared_when_cis_overlap_and_broken_by_memory():
    rows = [ok_row("torch", 64, 10.0, 1.0, peak_mib=900), ok_row("flax", 64, 10.5, 1.0, peak_mib=600),
            ok_row("keras-jax", 64, 20.0, 0.5, peak_mib=100)]
    rec = recommend(rows)
    assert sorted(rec.tie) == ["flax", "torch"]
    assert rec.choice == "flax"  # lower peak memory breaks the tie; keras-jax is not in it
    assert rec.reason.startswith("Tie between") and "peak memory" in rec.reason


def test_leaking_row_never_recommended_even_if_fastest():
    rec = recommend([ok_row("flax", 64, 5.0, 0.1, leak="leak", slope=MIB), ok_row("torch", 64, 10.0, 0.1)])
    assert rec.choice == "torch" and "flax" not in rec.tie
    assert "leaks" in rec.reason


def test_inconclusive_leak_allowed_but_mentioned():
    rec = recommend([ok_row("flax", 64, 5.0, 0.1, leak="inconclusive"), ok_row("torch", 64, 10.0, 0.1)])
    assert rec.choice == "flax" and "inconclusive" in rec.reason


def test_failed_and_skipped_rows_never_recommended():
    rec = recommend([failed_row("flax", 64, "device_oom", "CUDA out of memory"),
                     failed_row("jax", 64, "skipped", "preflight", status="skipped"),
                     ok_row("torch", 64, 50.0, 1.0)])
    assert rec.choice == "torch" and "device_oom" in rec.reason


def test_all_failed_gives_none_with_reason():
    rec = recommend([failed_row("torch", 256, "device_oom", "CUDA out of memory"),
                     failed_row("keras-jax", 256, "int32_overflow", "work_element_count >= 0"),
                     ok_row("flax", 256, 5.0, 0.1, leak="leak", slope=MIB)])
    assert rec.choice is None and rec.tie == []
    assert "device_oom" in rec.reason and "int32_overflow" in rec.reason and "flax leaks" in rec.reason


def test_one_failed_repeat_disqualifies_and_repeats_aggregate():
    rows = [ok_row("torch", 64, 5.0, 0.1, repeat=0), failed_row("torch", 64, "nan_loss", "loss is nan"),
            ok_row("flax", 64, 8.0, 0.1, repeat=0), ok_row("flax", 64, 9.0, 0.1, repeat=1),
            ok_row("flax", 64, 8.5, 0.1, repeat=2)]
    rec = recommend(rows)
    assert rec.choice == "flax" and "nan_loss" in rec.reason
    assert "8.50 ms" in rec.reason  # median over repeats of the per-repeat medians


def test_scenario_and_sweep_rows_ignored():
    scen = ok_row("flax", 64, 1.0, 0.1, scenario="keep_loss_tensors")
    sweep = ok_row("keras-jax", 64, 1.0, 0.1, sweep={"impl": "keras-jax", "probe_batch": 64, "outcome": "ok"})
    rec = recommend([scen, sweep, ok_row("torch", 64, 10.0, 0.1)])
    assert rec.choice == "torch"
    assert recommend([scen]).choice is None


# --------------------------------------------------------------------------- compare


def windows(median_ms: float, seed: int, n: int = 20, noise: float = 0.02) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median_ms * MS * (1 + noise * rng.standard_normal(n)))


def run_with(times: dict[str, list[float]], peak_mib: float = 500) -> list[dict]:
    rows = []
    for impl, w in times.items():
        st = summarize_steps(w, 1, 64).to_dict()
        r = ok_row(impl, 64, st["median_s"] / MS, (st["ci95_high_s"] - st["mean_s"]) / MS, peak_mib=peak_mib,
                   window_times=w)
        rows.append(r)
    return rows


def test_compare_flags_planted_slowdown():
    a = run_with({"torch": windows(10.0, seed=1), "flax": windows(10.0, seed=2)})
    b = run_with({"torch": windows(12.0, seed=3), "flax": windows(10.0, seed=4)}, peak_mib=550)
    res = {d["impl"]: d for d in compare_runs(a, b)}
    assert res["torch"]["regression"] and res["torch"]["samples"] == "windows"
    assert 1.15 < res["torch"]["ratio"] < 1.25 and res["torch"]["p_value"] < 0.05
    assert res["torch"]["memory_ratio"] == pytest.approx(1.1, rel=1e-3)
    assert not res["flax"]["regression"]
    print_comparison(list(res.values()))


def test_compare_same_distribution_not_flagged():
    a = run_with({"torch": windows(10.0, seed=11)})
    b = run_with({"torch": windows(10.0, seed=12)})
    (d,) = compare_runs(a, b)
    assert not d["regression"] and not d["improvement"] and abs(d["ratio"] - 1) < 0.05


def test_compare_without_windows_falls_back():
    a = [ok_row("torch", 64, 10.0, 0.2, repeat=i) for i in range(2)]
    b = [ok_row("torch", 64, 13.0, 0.2, repeat=i) for i in range(2)]
    (d,) = compare_runs(a, b)
    assert d["samples"] == "none" and d["ratio"] == pytest.approx(1.3) and not d["regression"]
    a3 = [ok_row("torch", 64, 10.0 + 0.05 * i, 0.2, repeat=i) for i in range(4)]
    b3 = [ok_row("torch", 64, 13.0 + 0.05 * i, 0.2, repeat=i) for i in range(4)]
    (d3,) = compare_runs(a3, b3)
    assert d3["samples"] == "repeat medians" and d3["regression"]


def test_compare_matches_cells_and_flags_new_failures():
    a = [ok_row("torch", 64, 10.0, 0.2), ok_row("torch", 128, 10.0, 0.2), ok_row("flax", 64, 10.0, 0.2)]
    b = [failed_row("torch", 64, "device_oom", "OOM"), ok_row("torch", 128, 10.0, 0.2, scenario="x")]
    res = compare_runs(a, b)
    assert len(res) == 1 and res[0]["new_failure"] and res[0]["status"] == "failed in B"


# --------------------------------------------------------------------------- headless browser


def test_html_renders_in_headless_chromium(built, tmp_path):
    browser = find_chromium()
    if browser is None:
        pytest.skip(f"{INSTALL_HINT}: HTML not rendered in a browser")
    page = built / "report.html"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert "<title>vaebench report 20261123-170000-abcdef</title>" in dom
    assert "Tie between torch and keras-jax" in dom
    assert "<strong>Use torch</strong>" in dom
    assert dom.count("<img") >= 4


def test_no_framework_imports_in_reports():
    import ast

    root = REPO / "reports"
    banned = {"torch", "jax", "flax", "keras", "tensorflow"}
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert n.split(".")[0] not in banned, f"{path.name} imports {n}"


def test_a_fixed_length_spec_names_its_plots_without_a_k(tmp_path):
    """masked-multiomics has no k (its rows carry ``kmer: None``): its plot files say so by leaving k out,
    where they used to read ``kNone``."""
    rows = [ok_row(impl, 64, ms, 0.2, spec="masked", kmer=None) for impl, ms in (("torch", 10.0), ("flax", 9.0))]
    out = build_report([write_jsonl(tmp_path / "20261123-170000-abcdef.jsonl", rows)], out_root=tmp_path / "out")
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert "step_time_masked_hmaske.png" in names, names
    assert not [n for n in names if "None" in n], names


# --------------------------------------------------------------------------- energy


def test_energy_has_a_column_where_measured_and_one_line_why_not_elsewhere(tmp_path):
    nvml = {"source": "nvml", "joules": 120.0, "joules_per_step": 1.5, "samples_per_joule": 42.7, "steps": 80}
    absent = {"source": None, "absent_reason": "no RAPL: /sys/class/powercap does not exist here"}
    rows = [ok_row("torch", 64, 10.0, 0.2, schema_version=2, energy=nvml),
            ok_row("flax", 64, 12.0, 0.2, schema_version=2, energy=absent)]
    md = (build_report([write_jsonl(tmp_path / "e.jsonl", rows)], out_root=tmp_path / "out") / "report.md").read_text()
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert "| J/step | samples/J |" in results
    assert "| 1.5 | 42.7 |" in results
    assert "not measured for some cells: no RAPL: /sys/class/powercap does not exist here" in results
    md1 = (build_report([write_jsonl(tmp_path / "old.jsonl", [ok_row("torch", 64, 10.0, 0.2)])],
                        out_root=tmp_path / "out1") / "report.md").read_text()
    assert "J/step" not in md1 and "not measured in this run: the row was written by schema 1" in md1


def test_a_run_id_of_dot_dot_in_the_rows_writes_and_deletes_nothing_outside_the_out_dir(tmp_path):
    """Issue 27: rows saying ``"run_id": ".."`` made ``report --out D/out`` write report.md into ``D/`` and
    delete ``D/plots/my_figure.png``. The folder is named from the run id with no leading dot."""
    user = tmp_path / "D"
    (user / "plots").mkdir(parents=True)
    (user / "plots" / "my_figure.png").write_bytes(b"mine")
    (user / "report.md").write_text("my notes")
    rows = [dict(ok_row("torch", 64, 40, 0.5), run_id="..")]
    out = build_report([str(write_jsonl(tmp_path / "r.jsonl", rows))], out_root=user / "out", plots=False)
    assert out.parent == user / "out" and out.name == "x"
    assert (user / "plots" / "my_figure.png").read_bytes() == b"mine"
    assert (user / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in user.iterdir()) == ["out", "plots", "report.md"]
