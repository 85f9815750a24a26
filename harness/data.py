"""Where batches come from: synthetic k-mer profiles, or the user's own ``.npy``.

The synthetic profiles are real k-mer counts of simulated contigs (``harness.synthetic``): each row
is a 10 kb sequence of one of a few dozen simulated taxa, each an order-3 Markov chain with its own
GC content and dinucleotide bias; every k-mer is folded onto its canonical form (the smaller of it
and its reverse complement), counted and normalised to frequencies. So the values have the sparsity
and scale of the user's data, which matters for BCE and for NaN behaviour, and the rows have the
cluster structure of a metagenome, which matters for what a VAE's loss curve says. The few rows a
cell or a parity check needs are made here in RAM; a large set is cached on disk as a memmap by
``harness.synthetic.cached_profiles``.

User data is opened as a memmap and streamed batch by batch, never loaded
whole: 7-mer data sets are larger than RAM. A ``--data`` file is used as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.files import not_regular
from harness.kmers import canonical_index, kmer_profile  # noqa: F401 - re-exported: the data's k-mer conventions
from harness.spec.schema import canonical_kmer_count
from harness.synthetic import generate_profiles


class DataError(ValueError):
    """A data file the benchmark cannot use; the message is one line and names the fix."""


def synthetic_profiles(k: int, rows: int, seq_len: int = 10_000, seed: int = 0) -> np.ndarray:
    """``rows`` canonical k-mer frequency profiles (float32, in RAM) of simulated contigs of
    ``seq_len`` bases from the default taxa of ``harness.synthetic``: the first ``rows`` rows of
    ``harness.synthetic.cached_profiles`` for the same ``seed`` and ``seq_len`` (default
    ``harness.synthetic.SEQ_LEN``), so a cell's rows and a cached set agree. For a few hundred rows;
    a large set belongs in that cache, not in RAM."""
    return generate_profiles(k, rows, seed, seq_len=seq_len)


# ----------------------------------------------------------------------- user data


def split_columns(text: str) -> tuple[int | None, int | None]:
    """``A:B`` -> (A, B), either side ``None`` where empty; indices may be negative (from the end)."""
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        a, b = (int(x) if x.strip() else None for x in parts)
    except ValueError:
        raise DataError(f"--columns {text!r} is not of the form A:B (for example --columns 2080:10272, or "
                        "--columns=-8192: for the last 8192 columns)") from None
    if a is not None and b is not None and (a < 0) == (b < 0):  # decidable without the file's width
        _check_order(text, a, b)
    return a, b


def _check_order(text: str, start: int, stop: int) -> None:
    if start > stop:
        raise DataError(f"--columns {text} is reversed; write the lower bound first")
    if start == stop:
        raise DataError(f"--columns {text} is empty; B must be greater than A")


def parse_columns(text: str | None, width: int) -> slice:
    """``A:B`` -> slice(A, B), checked against the file's width. As in a Python slice, a side left
    empty means the edge and a negative index counts from the end (``-32:``: the last 32 columns)."""
    if not text:
        return slice(0, width)
    a, b = split_columns(text)
    start = 0 if a is None else a + width if a < 0 else a
    stop = width if b is None else b + width if b < 0 else b
    _check_order(text, start, stop)
    if not 0 <= start < stop <= width:
        raise DataError(f"--columns {text} is outside the file's {width} columns (0:{width})")
    return slice(start, stop)


def check_rows(arr: np.ndarray, batch: int, wrap: bool, where: str) -> None:
    """A file needs at least one row, and a full batch of distinct rows unless ``wrap`` allows repeats."""
    rows = arr.shape[0]
    if rows == 0:
        raise DataError(f"{where} has 0 rows; it needs at least one batch ({batch} rows)")
    if rows < batch and not wrap:
        raise DataError(f"{where} has {rows} rows, fewer than the batch of {batch}; lower --batch, or pass "
                        "--wrap to let rows wrap around within a batch")


def open_npy(path: str | Path, columns: str | None = None) -> np.ndarray:
    """Open a ``.npy`` file as a read-only memmap and check its shape and dtype."""
    path = Path(path)
    kind = not_regular(path)
    if kind == "missing":
        raise DataError(f"data file {path} does not exist; pass an existing .npy file with --data")
    if kind:
        raise DataError(f"data file {path} is {kind}, not a regular file; pass a .npy file with --data")
    if path.suffix != ".npy":
        raise DataError(f"data file {path} is not a .npy file; save it with numpy.save")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any reader error becomes one line
        raise DataError(f"data file {path} could not be read as .npy: {str(exc).splitlines()[0]}") from None
    if not isinstance(arr, np.ndarray):  # np.load opens a zip archive (an .npz renamed .npy) as an NpzFile
        arr.close()
        raise DataError(f"data file {path} is an .npz archive, not a .npy array; save one array with numpy.save")
    if arr.ndim != 2:
        raise DataError(f"data file {path} has {arr.ndim} dimensions {arr.shape}; it must be 2-D (rows, features)")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"data file {path} has dtype {arr.dtype}; it must be floating point (float32)")
    return arr[:, parse_columns(columns, arr.shape[1])]


def check_block(block: np.ndarray, first_row: int, where: str) -> None:
    """Raise DataError naming the first bad row and column of a block."""
    bad = ~np.isfinite(block)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{where}: row {first_row + r}, column {c} is {block[r, c]}; the data must have no NaN or inf")
    out = (block < 0) | (block > 1)
    if out.any():
        r, c = np.argwhere(out)[0]
        raise DataError(
            f"{where}: row {first_row + r}, column {c} is {block[r, c]:g}; BCE needs values in [0, 1] "
            "(normalise rows to frequencies)"
        )


def validate_file(arr: np.ndarray, where: str, chunk_rows: int = 4096) -> None:
    """Scan the whole file in chunks, so a bad value fails before the run, not mid-matrix."""
    for start in range(0, arr.shape[0], chunk_rows):
        check_block(np.asarray(arr[start : start + chunk_rows]), start, where)


# ------------------------------------------------------------------------ batches


@dataclass
class BatchSource:
    """Streams ``batch``-row float32 blocks, cycling through ``data``.

    With a memmap, each batch is read from disk into a fresh array: the pages
    read show up as file-backed RSS (RssFile), not as a leak.
    """

    data: np.ndarray
    batch: int
    name: str = "synthetic"

    def __post_init__(self) -> None:
        if self.data.shape[0] == 0:
            raise DataError(f"{self.name} has 0 rows; it needs at least one batch ({self.batch} rows)")
        if self.data.shape[0] < self.batch:
            reps = -(-self.batch // self.data.shape[0])
            if not isinstance(self.data, np.memmap):
                self.data = np.tile(np.asarray(self.data), (reps, 1))
        self._pos = 0

    @property
    def width(self) -> int:
        return self.data.shape[1]

    def next(self) -> np.ndarray:
        """The next batch, in a fresh array."""
        return self.next_into(np.empty((self.batch, self.width), dtype=np.float32))

    def next_into(self, out: np.ndarray) -> np.ndarray:
        """The next batch, written into ``out`` (``batch`` x ``width`` float32), which is returned."""
        n = self.data.shape[0]
        if self._pos + self.batch > n:
            self._pos = 0
        if self.batch > n:  # a memmap smaller than one batch: wrap around
            idx = np.arange(self._pos, self._pos + self.batch) % n
            out[...] = self.data[idx]
        else:
            np.copyto(out, self.data[self._pos : self._pos + self.batch], casting="same_kind")
        self._pos += self.batch
        return out

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.next()


class BatchRing:
    """A fixed ring of ``slots`` host buffers, refilled in place from a :class:`BatchSource`.

    What a real input pipeline holds: a few pinned or pooled buffers, reused batch after batch,
    so its footprint is constant. The leak phase (``harness.run.phases.leak``) trains from one,
    so that the RSS it samples moves with the framework and the model, not with a fresh 16 MiB
    array allocated and freed per batch by the harness (``BatchSource.next``), which swung a
    dense k=7 b=512 cell's RSS by about 120 MiB (issue 25's measurement). Its bytes are recorded in the row.
    Each slot is overwritten only ``slots`` steps after it was handed out, and every step of the
    leak phase is synchronised before the next, so no step still reads a slot being refilled.
    """

    def __init__(self, source: BatchSource, slots: int = 2) -> None:
        if slots < 1:
            raise ValueError(f"a batch ring needs at least one slot, got {slots}")
        self.source = source
        self.buffers = [np.zeros((source.batch, source.width), dtype=np.float32) for _ in range(slots)]
        self._i = 0

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)

    def next(self) -> np.ndarray:
        buf = self.buffers[self._i % len(self.buffers)]
        self._i += 1
        return self.source.next_into(buf)


def synthetic_binary(width: int, rows: int, density: float = 0.1, seed: int = 0) -> np.ndarray:
    """Binary features, mostly zeros, for a spec whose input is not a k-mer profile (seed 004's
    methylation and histone marks are binary calls over 12,001 features)."""
    rng = np.random.default_rng(seed)
    return (rng.random((rows, width)) < density).astype(np.float32)


def synthetic_rows(width: int, k: int | None, rows: int, seed: int = 0, seq_len: int = 10_000) -> np.ndarray:
    """Synthetic training rows for a spec of input length ``width``: k-mer profiles when ``k`` sizes it,
    else binary features (a fixed-length preset such as masked-multiomics)."""
    if k is not None and canonical_kmer_count(k) == width:
        return synthetic_profiles(k, rows, seq_len=seq_len, seed=seed)
    return synthetic_binary(width, rows, seed=seed)


def make_source(k: int | None, batch: int, data: str | None = None, columns: str | None = None,
                synthetic_rows_n: int = 256, seed: int = 0, width: int | None = None) -> BatchSource:
    """The batches a cell trains on: the user's file if given, else synthetic rows. ``width`` is the
    spec's input length (default: the canonical k-mer count of ``k``)."""
    width = canonical_kmer_count(k) if width is None else width
    if data:
        arr = open_npy(data, columns)
        if arr.shape[1] != width:
            what = f"k={k} has {width} canonical k-mers" if k is not None else f"the spec takes {width} features"
            raise DataError(f"data file {data} has {arr.shape[1]} columns but {what}; pick the block with --columns A:B")
        return BatchSource(arr, batch, name=str(data))
    return BatchSource(synthetic_rows(width, k, synthetic_rows_n, seed=seed), batch)
