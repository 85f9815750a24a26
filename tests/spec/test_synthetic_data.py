"""Structured synthetic profiles (``harness.synthetic``): what the rows are, that the taxa and their Markov
order show in them, and that the on-disk cache is keyed, reused, read-only and never trusted when damaged.

Small on purpose (k=3..5, a few hundred rows of 10 kb or less): the whole file runs in a few seconds.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import harness.synthetic as syn
from harness.data import canonical_index, kmer_profile, synthetic_profiles, synthetic_rows
from harness.npy_rows import NpyRows, feature_range
from harness.spec.schema import canonical_kmer_count
from harness.synthetic import (
    Taxa,
    cache_path,
    cached_profiles,
    generate_profiles,
    row_taxa,
    simulate_taxon,
    taxon_traits,
    transition_tables,
)


def _odds_cg(x: np.ndarray) -> float:
    """Observed CpG frequency over the product of the C and G frequencies (1: no dinucleotide bias)."""
    f = np.bincount(x.ravel(), minlength=4) / x.size
    pairs = (x[:, :-1] * 4 + x[:, 1:]).ravel()
    return float(np.mean(pairs == 6) / (f[1] * f[2]))  # 6 = C(1) * 4 + G(2)


def _order_gain(x: np.ndarray) -> float:
    """Log-likelihood ratio (G statistic) of next-base counts given the last 3 bases over given the last 2:
    about its degrees of freedom (144) when the chain has order 2, thousands when the third base matters."""
    n = x.shape[1] - 3
    code = np.zeros((x.shape[0], n), np.int64)
    for i in range(4):
        code = code * 4 + x[:, i : i + n]
    counts = np.bincount(code.ravel(), minlength=256).reshape(4, 16, 4).astype(float)  # oldest, middle two, next
    p3 = counts / counts.sum(-1, keepdims=True)
    middle = counts.sum(0)
    p2 = middle / middle.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(2 * np.nansum(counts * np.log(p3 / p2[None])))


# ---------------------------------------------------------------------------------- the rows


@pytest.mark.parametrize("k", [3, 4, 5])
def test_rows_are_canonical_frequency_profiles_of_the_simulated_contigs(k):
    prof = generate_profiles(k, 20, seed=0, seq_len=3_000)
    assert prof.shape == (20, canonical_kmer_count(k)) and prof.dtype == np.float32
    assert (prof >= 0).all() and np.allclose(prof.sum(1), 1, atol=1e-5)
    # the same convention as harness.data.kmer_profile (canonical columns), on the row's own sequence
    taxon, draws = syn._row_streams(0, 5, 1, Taxa(), 3_000)
    seq = syn._walk(Taxa(), taxon, draws)[:, 0]
    np.testing.assert_array_equal(prof[5], kmer_profile(seq, k))
    assert canonical_index(k).max() + 1 == prof.shape[1]


def test_a_row_depends_on_its_seed_and_index_only_not_on_chunks_or_the_row_count():
    whole = generate_profiles(4, 40, seed=3, seq_len=2_000)
    np.testing.assert_array_equal(whole, generate_profiles(4, 40, seed=3, seq_len=2_000, chunk_rows=7))
    np.testing.assert_array_equal(whole[10:25], generate_profiles(4, 15, seed=3, seq_len=2_000, first_row=10))
    other = generate_profiles(4, 40, seed=4, seq_len=2_000)
    assert not np.array_equal(whole, other) and not np.isclose(whole, other).all(1).any()


def test_the_in_ram_rows_of_a_cell_are_the_first_rows_of_the_cached_set(tmp_path):
    cached = cached_profiles(3, 30, seed=2, cache_dir=tmp_path)
    np.testing.assert_array_equal(synthetic_profiles(3, 12, seed=2), cached[:12])
    np.testing.assert_array_equal(synthetic_rows(32, 3, 12, seed=2), cached[:12])


def test_taxa_are_validated_and_their_tables_are_distributions():
    with pytest.raises(ValueError, match="order"):
        Taxa(order=4)
    with pytest.raises(ValueError, match="n_taxa"):
        Taxa(n_taxa=0)
    for order in (2, 3):
        p = transition_tables(Taxa(n_taxa=5, order=order))
        assert p.shape == (5, 4**order, 4) and (p > 0).all() and np.allclose(p.sum(-1), 1)
    first = transition_tables(Taxa(n_taxa=3))
    np.testing.assert_array_equal(first, transition_tables(Taxa(n_taxa=6))[:3])  # adding taxa keeps the first
    assert not np.array_equal(first, transition_tables(Taxa(n_taxa=3, taxa_seed=1)))


# ------------------------------------------------------------------------------- the structure


def test_held_out_rows_come_from_the_same_taxa_and_the_taxa_are_distinguishable():
    """Centroids of seed 0's rows, per taxon, classify seed 1's rows (new contigs, same taxa); with
    other taxa (another taxa_seed) the same labels mean nothing."""
    train, labels = generate_profiles(4, 256, seed=0, seq_len=5_000), row_taxa(256, seed=0)
    assert len(set(labels)) == 32
    centroids = np.stack([train[labels == t].mean(0) for t in range(32)])

    def accuracy(rows, truth):
        return float(np.mean(((rows[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == truth))

    held_out = generate_profiles(4, 128, seed=1, seq_len=5_000)
    assert accuracy(held_out, row_taxa(128, seed=1)) >= 0.9
    strangers = generate_profiles(4, 128, seed=1, seq_len=5_000, taxa=Taxa(taxa_seed=1))
    assert accuracy(strangers, row_taxa(128, seed=1)) < 0.3


def test_gc_content_and_cpg_depletion_differ_between_taxa_as_drawn():
    traits = taxon_traits(Taxa())
    gc = [float(np.isin(simulate_taxon(t, 2, 10_000), (1, 2)).mean()) for t in range(32)]
    assert np.corrcoef(traits.gc, gc)[0, 1] > 0.95 and max(gc) - min(gc) > 0.35
    depleted, plain = int(np.argmin(traits.cpg)), int(np.argmax(traits.cpg))
    # the Markov chain, not the composition: CpG is rarer than its taxon's C and G frequencies predict
    assert _odds_cg(simulate_taxon(depleted, 4, 10_000)) < 0.5
    assert _odds_cg(simulate_taxon(plain, 4, 10_000)) > 0.8


def test_the_markov_order_shows_in_the_sequences():
    for t in range(3):
        assert _order_gain(simulate_taxon(t, 4, 20_000, taxa=Taxa(order=3))) > 1_000
        assert _order_gain(simulate_taxon(t, 4, 20_000, taxa=Taxa(order=2))) < 300


# ------------------------------------------------------------------------------------ the cache


def test_same_parameters_give_the_same_bytes_from_one_read_only_file(tmp_path, monkeypatch):
    arr = cached_profiles(4, 300, seed=0, seq_len=2_000, cache_dir=tmp_path)
    path = cache_path(4, 300, seed=0, seq_len=2_000, cache_dir=tmp_path)
    assert isinstance(arr, np.memmap) and arr.shape == (300, 136) and arr.dtype == np.float32
    assert path.parent == tmp_path / "synthetic" and [p.name for p in path.parent.iterdir()] == [path.name]
    np.testing.assert_array_equal(arr, generate_profiles(4, 300, seed=0, seq_len=2_000))
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[0, 0] = 1
    mtime = path.stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("the cached file should have been reused")

    monkeypatch.setattr(syn, "_write", no_generation)
    again = cached_profiles(4, 300, seed=0, seq_len=2_000, cache_dir=tmp_path)
    assert again.tobytes() == arr.tobytes() and path.stat().st_mtime_ns == mtime


def test_every_parameter_keys_the_file(tmp_path):
    base = dict(k=4, rows=10, seed=0, taxa=Taxa(), seq_len=2_000, cache_dir=tmp_path)
    changes = [{"k": 5}, {"rows": 11}, {"seed": 1}, {"seq_len": 2_001}, {"taxa": Taxa(n_taxa=31)},
               {"taxa": Taxa(order=2)}, {"taxa": Taxa(taxa_seed=1)}]
    paths = {cache_path(**base)} | {cache_path(**{**base, **c}) for c in changes}
    assert len(paths) == len(changes) + 1
    assert not np.array_equal(cached_profiles(**base), cached_profiles(**{**base, "seed": 1}))


def test_the_default_cache_is_the_machines_vaebench_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAEBENCH_CACHE_DIR", str(tmp_path / "c"))
    assert cache_path(3, 5, 0).parent == tmp_path / "c" / "synthetic"
    cached_profiles(3, 5, 0, seq_len=500)
    assert cache_path(3, 5, 0, seq_len=500).is_file()


def test_two_writers_at_once_leave_one_whole_file(tmp_path):
    args = dict(k=4, rows=600, seed=5, seq_len=1_000, cache_dir=tmp_path)
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda _: np.array(cached_profiles(**args)), range(2)))
    expected = generate_profiles(4, 600, seed=5, seq_len=1_000)
    assert all(np.array_equal(g, expected) for g in got)
    assert [p.name for p in (tmp_path / "synthetic").iterdir()] == [cache_path(**args).name]
    np.testing.assert_array_equal(cached_profiles(**args), expected)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong shape", "zeros"])
def test_a_damaged_cache_file_is_generated_again(tmp_path, damage):
    args = dict(k=3, rows=50, seed=0, seq_len=1_000, cache_dir=tmp_path)
    good = np.array(cached_profiles(**args))
    path = cache_path(**args)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    elif damage == "garbage":
        path.write_bytes(b"not an npy file")
    elif damage == "wrong shape":
        np.save(path, good[:10])
    else:  # the right size, header and dtype, but no data written (a crash before the data reached the disk)
        np.save(path, np.zeros_like(good))
    again = cached_profiles(**args)
    np.testing.assert_array_equal(again, good)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def test_an_unwritable_cache_still_gives_the_rows(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory should be")
    arr = cached_profiles(3, 20, seed=0, seq_len=1_000, cache_dir=blocker)
    np.testing.assert_array_equal(arr, generate_profiles(3, 20, seed=0, seq_len=1_000))
    assert not arr.flags.writeable


def test_feature_range_scans_in_chunks_and_matches_min_and_max(tmp_path):
    arr = cached_profiles(3, 100, seed=0, seq_len=1_000, cache_dir=tmp_path)
    rows = NpyRows(arr.filename)
    lo, hi = feature_range(rows, chunk_rows=7)
    np.testing.assert_array_equal(lo, np.asarray(arr).min(0))
    np.testing.assert_array_equal(hi, np.asarray(arr).max(0))
    assert lo.dtype == hi.dtype == np.float32 and (lo < hi).all()
    np.testing.assert_array_equal(rows[13:29], np.asarray(arr[13:29]))
    np.testing.assert_array_equal(rows.take(np.array([99, 0])), np.asarray(arr[[99, 0]]))
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError):
        feature_range(NpyRows(tmp_path / "empty.npy"))
