"""Structured synthetic k-mer profiles: simulated taxa, generated in chunks, cached on disk as a memmap.

Why structure. I.i.d. bases with one GC knob give profiles that are nearly all alike: a VAE learns them
in a few steps, so its curves and its numerics say little about training on real contigs, which come
from a few dozen organisms that differ in GC content, dinucleotide bias and higher-order context. Here
every row is a contig of one of :class:`Taxa`'s ``n_taxa`` simulated taxa, each an order-2 or order-3
Markov chain of its own. The held-out rows (another ``seed``) are new contigs of the same taxa, so a
model that learned the taxa generalises to them, as it should on real data.

Why per-row random streams. Row ``r`` of ``seed`` is drawn from a generator keyed on
``(seed, r)`` alone: its taxon, its first bases and its walk. So a row does not depend on the chunk
size, on how many rows were asked for, or on ``k`` (the same contigs are counted at every k): the 256
in-RAM rows of a benchmark cell are the first 256 rows of the cached file with the same parameters.

Why quantised draws. Each step draws a ``QUANT_BITS``-bit integer ``u`` and looks the next state up
in one table, ``LUT[state + u]``, whose entries are the next state already multiplied out (taxon
offset, context and quantisation). So one position of a whole chunk costs two numpy calls (an add and
a ``take``). The transition probabilities are therefore multiples of ``1 / 2**QUANT_BITS`` (1/1024);
:func:`transition_tables` returns these exact quantised probabilities, so the model is what is
simulated, not an approximation of it.

Why the cache writes through windows. A writable memmap of the whole file keeps every page written
resident in the process (file-backed RSS) until it is unmapped: generating ``cached_profiles(7, 20_000)``
through one mapping held the whole 625 MiB array in RSS. Each chunk is written through a window
(``np.memmap`` of that chunk's rows, flushed and closed), so the process holds one chunk at a time.

Measured on a 2-core AMD EPYC VM (one thread, shared with other work, so +-25%), default taxa and
``SEQ_LEN`` 10,000, chunks of 256 rows: ``generate_profiles`` makes about 3,000-3,900 rows/s at k=3
and k=5 and 1,900-3,000 at k=7 (a position step of all 256 rows takes about 5 us; at k=7 counting
into 8,192 columns costs as much again); 256 rows for a cell take 0.09 s. ``cached_profiles(7,
20_000, seed=0)``: 8.7 s to generate and write its 655 MB, peak RSS 123 MiB (34 MiB of it the
interpreter and numpy); opening it again: 1 ms, RSS 34 MiB. Through one mapping of the whole file
the same generation peaked at 740 MiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from harness.files import default_cache_dir
from harness.kmers import canonical_index
from harness.spec.schema import canonical_kmer_count

#: bump when what a row holds for given parameters changes, so older cache files are not reused
GENERATOR_VERSION = 1
#: contig length: 10 kb, a long assembled contig (binners take contigs from 1.5-2.5 kb up); long
#: enough that a taxon's GC and dinucleotide signal shows through at k=4, short enough that k=7
#: profiles are as sparse as a real contig's (about 1.2 k-mers per column) and generation stays fast
SEQ_LEN = 10_000
#: rows simulated at once; sets memory (about 90 MB at k=7 and ``SEQ_LEN``), never the rows' values
CHUNK_ROWS = 256
#: bits of each step's uniform draw; the transition probabilities are multiples of 2**-QUANT_BITS
QUANT_BITS = 10
#: subdirectory of the cache directory that holds the profile files
CACHE_SUBDIR = "synthetic"
#: tags that keep the taxa's and the rows' random streams apart from any other use of the same seed
_TAXA_TAG, _ROW_TAG, _ONE_TAXON_TAG = 0x7A7A, 0x5EED, 0x0DE5

__all__ = ["CHUNK_ROWS", "GENERATOR_VERSION", "SEQ_LEN", "Taxa", "cache_path", "cached_profiles",
           "generate_profiles", "row_taxa", "simulate_taxon", "taxon_traits",
           "transition_tables"]


@dataclass(frozen=True)
class Taxa:
    """The simulated taxa: ``n_taxa`` Markov chains of order ``order`` (2 or 3), drawn from ``taxa_seed``.

    Taxon ``t``'s parameters come from a generator keyed on ``(taxa_seed, t)``, so adding taxa keeps
    the first ones. Each taxon draws:

    * a GC content ``gc`` uniform in 25%-75% (the span of most bacterial genomes), giving the base
      composition ``pi = ((1-gc)/2, gc/2, gc/2, (1-gc)/2)`` (A, C, G, T; strand-symmetric);
    * a CpG odds ratio uniform in 0.1-1.0 (vertebrate-like depletion to none, as in many bacteria) and a
      TpA odds ratio uniform in 0.6-1.0 (TpA is under-represented in most genomes);
    * a dinucleotide odds-ratio matrix ``D``: those two ratios times ``exp(N(0, 0.15))`` noise per
      dinucleotide, the noise shared by a dinucleotide and its reverse complement (genomic signatures
      are nearly strand-symmetric, Karlin's observation; canonical k-mers fold the strands anyway);
    * per context (the last ``order`` bases), a next-base distribution ``Dirichlet(100 * pi)``: near
      ``pi``, with context-specific preferences (a standard deviation of about 0.04 on 0.25) that make
      the order matter beyond dinucleotides; multiplied by ``D[last base, :]`` and renormalised.

    What the chains produce (default taxa, 80 kb each): GC content within 0.07 of the drawn ``gc``
    (CpG depletion and the noise shift it), spanning 26%-75%; the realised CpG odds ratio follows the
    drawn one (correlation 0.92) but milder, 0.22-1.1, as a chain's stationary frequencies absorb part
    of each step's bias. Nearest-centroid on 4-mer profiles of 5 kb contigs tells the 32 taxa apart
    without error. Concentration and noise were chosen for that: at ``Dirichlet(40 * pi)`` and noise
    0.2 the context preferences swamped the CpG signal (correlation 0.73).
    """

    n_taxa: int = 32
    order: int = 3
    taxa_seed: int = 0

    def __post_init__(self) -> None:
        if self.order not in (2, 3):
            raise ValueError(f"Taxa.order must be 2 or 3, got {self.order}")
        if self.n_taxa < 1:
            raise ValueError(f"Taxa.n_taxa must be at least 1, got {self.n_taxa}")


#: Dirichlet concentration of each context's next-base distribution around the taxon's composition
_CONCENTRATION = 100.0
_NOISE_SD = 0.15


@dataclass(frozen=True)
class _Traits:
    gc: np.ndarray  # (n_taxa,) target GC content
    cpg: np.ndarray  # (n_taxa,) CpG odds ratio
    tpa: np.ndarray  # (n_taxa,) TpA odds ratio
    counts: np.ndarray  # (n_taxa, 4**order, 4) int: quantised transition probabilities times 2**QUANT_BITS
    start: np.ndarray  # (n_taxa, 4) int: quantised base composition, for the first ``order`` bases


def _quantise(p: np.ndarray) -> np.ndarray:
    """Probabilities (last axis of 4, summing to 1) as integer counts summing to 2**QUANT_BITS.

    Every entry gets one count, so no transition is impossible, and the rest is shared in
    proportion (floors, then one more count to the largest remainders)."""
    q, width = 1 << QUANT_BITS, p.shape[-1]
    scaled = p * (q - width)
    counts = np.floor(scaled).astype(np.int64) + 1
    rest = q - counts.sum(-1, keepdims=True)  # 0 <= rest < width
    rank = np.argsort(np.argsort(np.floor(scaled) - scaled, axis=-1), axis=-1)  # 0: largest remainder
    counts += rank < rest
    assert (counts.sum(-1) == q).all()
    return counts


@lru_cache(maxsize=8)
def taxon_traits(taxa: Taxa) -> _Traits:
    """Every taxon's drawn parameters (see :class:`Taxa`) and its quantised transition counts."""
    m = 4**taxa.order
    comp = 3 - np.arange(4)  # complement: A<->T, C<->G
    gc, cpg, tpa, counts, start = [], [], [], [], []
    for t in range(taxa.n_taxa):
        rng = np.random.default_rng([_TAXA_TAG, taxa.taxa_seed, t])
        g = rng.uniform(0.25, 0.75)
        pi = np.array([(1 - g) / 2, g / 2, g / 2, (1 - g) / 2])
        c, a = rng.uniform(0.1, 1.0), rng.uniform(0.6, 1.0)
        noise = rng.normal(0, _NOISE_SD, (4, 4))
        noise = (noise + noise[comp][:, comp].T) / 2  # D[x, y] == D[comp y, comp x]
        odds = np.exp(noise)
        odds[1, 2] *= c  # CpG
        odds[3, 0] *= a  # TpA
        p = rng.dirichlet(_CONCENTRATION * pi, size=m) * odds[np.arange(m) % 4]  # row ctx: last base ctx % 4
        p /= p.sum(1, keepdims=True)
        gc.append(g), cpg.append(c), tpa.append(a), counts.append(_quantise(p)), start.append(_quantise(pi))
    return _Traits(np.array(gc), np.array(cpg), np.array(tpa), np.stack(counts), np.stack(start))


def transition_tables(taxa: Taxa) -> np.ndarray:
    """P[taxon, context, next base] (float64, ``n_taxa x 4**order x 4``), exactly the simulated
    (quantised) probabilities; a context's code is its bases in base 4, the oldest most significant."""
    return taxon_traits(taxa).counts / float(1 << QUANT_BITS)


@lru_cache(maxsize=4)
def _lookup(taxa: Taxa) -> tuple[np.ndarray, np.ndarray]:
    """The step table and the start table.

    A state is ``(taxon * 4**order + context) << QUANT_BITS``; ``step[state + u]`` is the next state
    for a draw ``u``, its context's last two bits the new base. ``start[taxon << QUANT_BITS | u]`` is
    a base drawn from the taxon's composition. int32: 32 order-3 taxa take 8 MiB."""
    tr = taxon_traits(taxa)
    q, m = 1 << QUANT_BITS, 4**taxa.order
    u = np.arange(q)

    def bases(counts: np.ndarray) -> np.ndarray:  # (..., 4) counts -> (..., q) base drawn by each u
        cum = np.cumsum(counts, -1)[..., :3]
        return (u >= cum[..., :, None]).sum(-2)

    nxt = bases(tr.counts)  # (n_taxa, m, q)
    ctx = np.arange(m)[None, :, None]
    taxon = np.arange(taxa.n_taxa)[:, None, None]
    step = ((taxon * m + ((ctx << 2) & (m - 1) | nxt)) << QUANT_BITS).astype(np.int32).ravel()
    return step, bases(tr.start).astype(np.uint8).ravel()


def _row_streams(seed: int, first_row: int, rows: int, taxa: Taxa, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's taxon and its ``seq_len`` quantised draws ((seq_len, rows), position-major so
    that one position of every row is contiguous), from the row's own generator."""
    taxon = np.empty(rows, np.int64)
    draws = np.empty((rows, seq_len), np.uint16)
    for i in range(rows):
        rng = np.random.default_rng([_ROW_TAG, seed, first_row + i])
        taxon[i] = rng.integers(taxa.n_taxa)
        draws[i] = rng.integers(0, 1 << QUANT_BITS, seq_len, dtype=np.uint16)
    return taxon, np.ascontiguousarray(draws.T)


def row_taxa(rows: int, seed: int, taxa: Taxa = Taxa(), first_row: int = 0) -> np.ndarray:
    """The taxon of each row of ``seed`` (its generator's first draw): the labels of the profiles."""
    return np.array([np.random.default_rng([_ROW_TAG, seed, first_row + i]).integers(taxa.n_taxa)
                     for i in range(rows)], np.int64)


def _walk(taxa: Taxa, taxon: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Bases (seq_len, rows) uint8 of the rows' chains: ``order`` bases from the taxon's composition,
    then one Markov step per position, all rows at once."""
    step, start = _lookup(taxa)
    seq_len, rows = draws.shape
    o, m = taxa.order, 4**taxa.order
    if seq_len < o:
        raise ValueError(f"seq_len {seq_len} is shorter than the Markov order {o}")
    state = np.empty((seq_len, rows), np.int32)
    ctx = np.zeros(rows, np.int64)
    for p in range(o):  # a state for each of the first bases, the context so far (its low bits the base)
        ctx = ctx * 4 + start[(taxon << QUANT_BITS) + draws[p]]
        state[p] = (taxon * m + ctx) << QUANT_BITS
    idx = np.empty(rows, np.int32)
    for p in range(o, seq_len):  # two numpy calls per position, across the chunk's rows
        np.add(state[p - 1], draws[p], out=idx)
        np.take(step, idx, out=state[p], mode="clip")
    return ((state >> QUANT_BITS) & 3).astype(np.uint8)


def simulate_taxon(taxon: int, rows: int, seq_len: int, seed: int = 0, taxa: Taxa = Taxa()) -> np.ndarray:
    """``rows`` sequences (rows, seq_len) uint8 of one taxon, for checking what a taxon's chain produces."""
    rng = np.random.default_rng([_ONE_TAXON_TAG, seed, taxon])  # apart from the profiles' row streams
    draws = rng.integers(0, 1 << QUANT_BITS, (seq_len, rows), dtype=np.uint16)
    return np.ascontiguousarray(_walk(taxa, np.full(rows, taxon, np.int64), draws).T)


@lru_cache(maxsize=16)
def _canonical_int32(k: int) -> np.ndarray:
    return canonical_index(k).astype(np.int32)


def _profiles(k: int, bases: np.ndarray) -> np.ndarray:
    """Canonical k-mer frequencies (rows, ncols) float32 of position-major bases (seq_len, rows),
    counted for every row with one ``np.bincount`` over ``column + row * ncols``."""
    seq_len, rows = bases.shape
    n, ncols = seq_len - k + 1, canonical_kmer_count(k)
    codes = np.zeros((n, rows), np.min_scalar_type(4**k - 1))  # uint16 up to k=8: half the memory traffic
    for i in range(k):
        codes <<= 2
        codes |= bases[i : i + n]
    cols = _canonical_int32(k)[codes]
    cols += (np.arange(rows, dtype=np.int32) * ncols)[None, :]
    counts = np.bincount(cols.ravel(), minlength=rows * ncols).reshape(rows, ncols)
    return (counts / n).astype(np.float32)


def generate_profiles(k: int, rows: int, seed: int, taxa: Taxa = Taxa(), seq_len: int = SEQ_LEN,
                      out: np.ndarray | None = None, *, first_row: int = 0,
                      chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Rows ``first_row .. first_row + rows - 1`` of ``seed``: canonical k-mer frequency profiles
    (float32, ``rows x canonical_kmer_count(k)``, each row summing to 1) of simulated contigs.

    Simulated ``chunk_rows`` rows at a time and written into ``out`` (allocated when None), so only a
    chunk's sequences are ever held. ``chunk_rows`` sets memory and speed, never the values."""
    if seq_len < k:
        raise ValueError(f"seq_len {seq_len} is shorter than k={k}")
    ncols = canonical_kmer_count(k)
    if out is None:
        out = np.empty((rows, ncols), np.float32)
    if out.shape != (rows, ncols):
        raise ValueError(f"out has shape {out.shape}, expected {(rows, ncols)}")
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        taxon, draws = _row_streams(seed, first_row + start, n, taxa, seq_len)
        out[start : start + n] = _profiles(k, _walk(taxa, taxon, draws))
    return out


# ------------------------------------------------------------------------------ cache


def cache_path(k: int, rows: int, seed: int, taxa: Taxa = Taxa(), seq_len: int = SEQ_LEN,
               cache_dir: str | Path | None = None) -> Path:
    """Where :func:`cached_profiles` keeps these rows: named by a hash of every parameter and
    :data:`GENERATOR_VERSION`, so a changed generator or parameter never reads an older file."""
    key = {"version": GENERATOR_VERSION, "k": k, "rows": rows, "seed": seed, "seq_len": seq_len,
           "quant_bits": QUANT_BITS, **asdict(taxa)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / CACHE_SUBDIR / f"k{k}-rows{rows}-seed{seed}-{digest}.npy"


def _open_cached(path: Path, shape: tuple[int, int]) -> np.memmap | None:
    """The cached file, read-only, if it is whole: the right shape and dtype, and its last row a
    frequency profile (a file cut short or zero-filled by a crash fails); else None."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # noqa: BLE001 - any reader error (cut short, bad header) means: generate again
        return None
    if not isinstance(arr, np.memmap) or arr.shape != shape or arr.dtype != np.float32:
        return None
    if shape[0] and not abs(float(arr[-1].sum(dtype=np.float64)) - 1.0) < 1e-3:
        return None
    return arr


def _write(path: Path, k: int, rows: int, seed: int, taxa: Taxa, seq_len: int) -> None:
    """Generate into ``path``: the header and size from ``open_memmap``, then each chunk through a
    window of its own rows (flushed and unmapped), so no more than a chunk is ever resident."""
    ncols = canonical_kmer_count(k)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, ncols))
    offset = mm.offset
    del mm
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        window = np.memmap(path, np.float32, "r+", offset=offset + start * ncols * 4, shape=(n, ncols))
        generate_profiles(k, n, seed, taxa, seq_len, out=window, first_row=start)
        window.flush()
        del window


def cached_profiles(k: int, rows: int, seed: int, taxa: Taxa = Taxa(), seq_len: int = SEQ_LEN,
                    cache_dir: str | Path | None = None) -> np.memmap:
    """Rows ``0 .. rows - 1`` of :func:`generate_profiles`, as a read-only memmap of a ``.npy`` file
    under ``<cache>/synthetic/`` (``cache_dir``, else ``harness.files.default_cache_dir``).

    Generated once, into a temporary file beside the final one that is then ``os.replace``d into
    place, so two processes generating the same file at once each write their own and one wins
    whole. A damaged file (unreadable, wrong shape or dtype, cut short) is generated again. Where
    the cache cannot be written, the rows go to an unlinked temporary file instead (no reuse)."""
    if rows < 1:
        raise ValueError(f"cached_profiles needs at least one row, got {rows}")
    path = cache_path(k, rows, seed, taxa, seq_len, cache_dir)
    shape = (rows, canonical_kmer_count(k))
    arr = _open_cached(path, shape)
    if arr is not None:
        return arr
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npy", dir=path.parent)
        final = True
    except OSError:  # a read-only cache: generate anyway, into the system's temporary directory
        fd, tmp = tempfile.mkstemp(prefix="vaebench-synthetic-", suffix=".npy")
        final = False
    os.close(fd)
    try:
        _write(Path(tmp), k, rows, seed, taxa, seq_len)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would keep a shared cache from other users
        if not final:
            arr = np.load(tmp, mmap_mode="r", allow_pickle=False)
            return arr  # the mapping outlives the file name, removed below
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # gone already once replaced into place
            os.unlink(tmp)
    arr = _open_cached(path, shape)
    if arr is None:
        raise OSError(f"synthetic profiles written to {path} could not be read back")
    return arr


