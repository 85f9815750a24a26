"""The recommended (framework, batch) per spec: most samples per second, ties on overlapping CIs broken by
peak memory, exclusions as for one batch, and the largest batch each framework trained."""

from __future__ import annotations

from fixtures.rows import failed_row, ok_row, write_jsonl

from reports.build import build_report
from reports.cells import group_cells
from reports.recommend import recommend_batch


def _by_batch(rows: list[dict]) -> dict:
    grouped = group_cells(rows)
    assert len(grouped) == 1
    return next(iter(grouped.values()))


def test_the_most_samples_per_second_wins_across_batches():
    # flax at 512: 512 / 0.25 s = 2,048 samples/s beats torch at 64 (64 / 0.04 = 1,600) and flax at 64 (1,280)
    rows = [ok_row("torch", 64, 40, 0.5), ok_row("flax", 64, 50, 0.5), ok_row("flax", 512, 250, 2),
            ok_row("torch", 512, 400, 2)]
    rec = recommend_batch(_by_batch(rows))
    assert (rec.choice, rec.batch, rec.tie) == ("flax", 512, [])
    assert rec.samples_per_s == 512 / 0.25
    assert "1.28× the next, torch at batch 64 (1,600 samples/s)" in rec.reason
    assert rec.largest == {"flax": 512, "torch": 512}


def test_a_tie_on_overlapping_cis_is_broken_by_peak_memory():
    # 64 / 0.040 = 1,600 and 512 / 0.330 = 1,552 samples/s; the CIs (+-4 ms, +-40 ms) overlap
    rows = [ok_row("torch", 64, 40, 4, peak_mib=300), ok_row("torch", 512, 330, 40, peak_mib=2000)]
    rec = recommend_batch(_by_batch(rows))
    assert rec.choice == "torch" and rec.batch == 64
    assert set(rec.tie) == {("torch", 64), ("torch", 512)}
    assert rec.reason.startswith("Tie between torch at batch 64") and "peak memory" in rec.reason
    # the same two with tight CIs: no tie, the faster wins though it peaks higher
    rows = [ok_row("torch", 64, 40, 0.1, peak_mib=300), ok_row("torch", 512, 300, 0.1, peak_mib=2000)]
    rec = recommend_batch(_by_batch(rows))
    assert (rec.batch, rec.tie) == (512, [])


def test_failed_and_confirmed_leaks_are_excluded_but_the_headroom_counts_ok_cells_and_sweep_probes():
    rows = [ok_row("torch", 64, 40, 0.5), ok_row("flax", 512, 100, 0.5, leak="leak", slope=10**6),
            failed_row("torch", 4096, "oom", "CUDA out of memory")]
    rec = recommend_batch(_by_batch(rows), sweep_largest={"torch": 2048})
    assert (rec.choice, rec.batch) == ("torch", 64)
    assert rec.largest == {"torch": 2048, "flax": 512}  # a leaking cell still trained its batch
    rows = [failed_row("torch", 64, "oom", "CUDA out of memory")]
    rec = recommend_batch(_by_batch(rows))
    assert rec.choice is None and rec.largest == {} and "No (impl, batch) pair is eligible" in rec.reason


def test_the_report_has_the_recommended_batch_section(tmp_path):
    rows = [ok_row("torch", 64, 40, 0.5), ok_row("flax", 64, 50, 0.5), ok_row("flax", 512, 250, 2),
            ok_row("torch", 512, 400, 2)]
    out = build_report([str(write_jsonl(tmp_path / "r.jsonl", rows))], out_root=tmp_path / "out", plots=False)
    md = (out / "report.md").read_text()
    section = md.split("## Recommended batch", 1)[1].split("\n## ", 1)[0]
    assert "| dense, k=5 | **flax at batch 512** (2,048 samples/s) | flax 512, torch 512 |" in section


def test_an_impl_faster_than_a_memory_broken_pick_is_named_faster_not_slower(tmp_path):
    """flax (1,600 samples/s, tight CI) ties with torch (1,400, a wide CI reaching flax's) and torch peaks lower,
    so torch is picked; keras-jax (1,500, a tight CI below flax's) is outside the tie yet faster than torch.
    The sentence said "keras-jax is 0.93× faster" before; it must say 1.07× faster, and why it is not the pick."""
    rows = [ok_row("flax", 64, 40, 0.25, peak_mib=2000), ok_row("torch", 64, 64 / 1.4, 7, peak_mib=300),
            ok_row("keras-jax", 64, 64 / 1.5, 0.1, peak_mib=2000)]
    rec = recommend_batch(_by_batch(rows))
    assert (rec.choice, rec.batch) == ("torch", 64) and ("flax", 64) in rec.tie and ("keras-jax", 64) not in rec.tie
    out = build_report([str(write_jsonl(tmp_path / "r.jsonl", rows))], out_root=tmp_path / "out", plots=False)
    md = (out / "report.md").read_text()
    answer = next(line for line in md.splitlines() if line.startswith("**dense, k=5**"))
    assert "use **torch at batch 64**" in answer and "flax is within noise" in answer, answer
    assert "keras-jax (1.07×) is faster than that but outside the tie: its CI lies below the fastest's" in answer, answer
    assert "0.93" not in answer and "slower" not in answer, answer


def test_cells_measured_on_different_device_models_never_share_a_group_or_a_recommendation():
    """A Slurm run over nodes with different GPUs (issue 24): the H200's rows and the H100's are two groups, each
    named by its device, so no table or recommendation mixes them; one device keeps the plain name."""
    h200 = {**ok_row("torch", 64, 10, 0.1)["fingerprint"],
            "gpus": [{"index": 0, "name": "NVIDIA H200", "memory_bytes": 141 * 2**30, "driver": "560.35"}]}
    rows = [ok_row("torch", 64, 10, 0.1), ok_row("flax", 64, 8, 0.1, fingerprint=h200)]
    groups = group_cells(rows)
    assert sorted(k[0] for k in groups) == ["dense on NVIDIA H100 80GB HBM3 (driver 550.54)",
                                            "dense on NVIDIA H200 (driver 560.35)"]
    assert all(len(cells) == 1 for by_batch in groups.values() for cells in by_batch.values())
    assert [k[0] for k in group_cells(rows[:1])] == ["dense"]
