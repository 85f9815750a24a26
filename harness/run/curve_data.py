"""The rows a training curve learns from, and the held-out rows it is judged on.

A curve measures learning, so no training row is seen twice unless the record says so (issue 23: 256 cycled
synthetic rows made batch 64's loss saw-tooth with period 4, which is memorisation). Step ``i`` trains on rows
``[i * batch, (i + 1) * batch)`` of the training set; past its end the rows wrap around and the record states the
number of epochs (``epochs``). The training set is shared by every batch and impl of a run, so their curves and
their held-out figures are read on the same data and the same scale.

* **synthetic** (the default): the structured k-mer profiles of ``harness.synthetic`` (simulated taxa, Markov
  chains), cached on disk as a memmap of ``train_rows`` rows and never held whole in RAM. They are min-max
  scaled per feature by the training set's range (``feature_range``, read in chunks) inside the worker, batch
  by batch: raw frequencies, each below 1e-2 and summing to 1, leave BCE so little to reconstruct that the KL
  collapses at any beta in every framework (torch, dense, k=5: the most informative latent element held 9e-6
  nats after 300 steps). The held-out rows are another draw from the same taxa (another seed).
  A spec whose input is not a k-mer profile (masked-multiomics) gets binary rows, written in chunks.
* **a ``--data`` file** is used as it is (no scaling): its last ``EVAL_ROWS`` rows (or its last fifth, if that
  is fewer) are held out and the rows before them train.

The parent (``curve_data``) is framework-free; the worker reads batches through ``CurveBatches``. Both read the
rows with ``pread`` (``harness.npy_rows``), not through a memory map, so neither process holds the rows it has read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.data import DataError, open_npy, parse_columns, synthetic_binary
from harness.npy_rows import NpyRows, feature_range
from harness.spec.schema import VAESpec, canonical_kmer_count

#: held-out rows every curve of a run is judged on (the same rows at every batch)
EVAL_ROWS = 256
#: the most synthetic training rows a run generates (at k=7: 2 GiB on disk); beyond, rows wrap and epochs are stated
MAX_TRAIN_ROWS = 65_536
CHUNK_ROWS = 4096


@dataclass(frozen=True)
class CurveData:
    """Where a run's training rows live and how the worker scales them; what the record states about them."""

    #: a .npy file the worker opens as a read-only memmap
    path: str
    #: the file's columns (``A:B``) the spec reads, for a ``--data`` file
    columns: str | None
    #: training rows: the first ``train_rows`` rows of the file
    train_rows: int
    #: "synthetic (...)" or the data file's path
    source: str
    #: min-max scaling by the training set's per-feature range (synthetic rows only)
    scaled: bool
    held_out: int = EVAL_ROWS

    def epochs(self, steps: int, batch: int) -> float:
        """How many times the curve passes over its training rows (at most 1: no row is seen twice)."""
        usable = (self.train_rows // batch) * batch
        return steps * batch / usable if usable else float("inf")

    def to_record(self, steps: int, batch: int) -> dict:
        return {"source": self.source, "train_rows": self.train_rows, "held_out_rows": self.held_out,
                "epochs": round(self.epochs(steps, batch), 4), "scaled": "min-max" if self.scaled else "as is"}


def held_out_rows(rows: int) -> int:
    """A data file's held-out rows: its last ``EVAL_ROWS``, or its last fifth if that is fewer."""
    return max(1, min(EVAL_ROWS, rows // 5))


def synthetic_train_rows(steps: int, batch: int) -> int:
    """Enough rows that ``steps`` steps at ``batch`` see each once (capped by ``MAX_TRAIN_ROWS``)."""
    return max(batch, min(MAX_TRAIN_ROWS, steps * batch))


def curve_data(spec: VAESpec, k: int | None, train_rows: int, seed: int, tmp: Path, data: str | None = None,
               columns: str | None = None) -> tuple[CurveData, np.ndarray, dict[str, np.ndarray]]:
    """(the training rows' description, the held-out rows, the scaling arrays to save beside the inputs)."""
    width = spec.input_length
    if data:
        arr = open_npy(data, columns)
        n_held = held_out_rows(arr.shape[0])
        if arr.shape[0] - n_held < 1:
            raise DataError(f"data file {data} has {arr.shape[0]} row(s); a curve holds out {n_held} and trains on "
                            "the rest, so it needs at least 2")
        held = np.asarray(arr[arr.shape[0] - n_held:], dtype=np.float32)
        return CurveData(str(data), columns, arr.shape[0] - n_held, str(data), False, n_held), held, {}
    if k is not None and canonical_kmer_count(k) == width:
        from harness.synthetic import Taxa, cached_profiles

        path = str(cached_profiles(k, train_rows, seed).filename)
        lo, hi = feature_range(NpyRows(path))
        held = np.asarray(cached_profiles(k, EVAL_ROWS, seed + 1))
        source = f"synthetic profiles of {Taxa().n_taxa} simulated taxa (harness.synthetic), seed {seed}"
    else:
        path, lo, hi = _binary_rows(tmp / "train.npy", width, train_rows, seed)
        held = synthetic_binary(width, EVAL_ROWS, seed=seed + 1)
        source = f"synthetic binary features, seed {seed}"
    span = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    held = np.clip((held - lo) / span, 0.0, 1.0).astype(np.float32)
    return CurveData(path, None, train_rows, source, True), held, {"lo": lo.astype(np.float32), "span": span}


def _binary_rows(path: Path, width: int, rows: int, seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Binary rows written in chunks to a memmap (12,001 features x 6,400 rows is 300 MB)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, width))
    for i, start in enumerate(range(0, rows, CHUNK_ROWS)):
        stop = min(rows, start + CHUNK_ROWS)
        out[start:stop] = synthetic_binary(width, stop - start, seed=seed * 1_000_003 + i)
    out.flush()
    del out
    return str(path), np.zeros(width, np.float32), np.ones(width, np.float32)


class CurveBatches:
    """Worker side: batch ``i`` of a curve, read from the memmap and scaled (the same in every impl)."""

    def __init__(self, path: str, columns: str | None, train_rows: int, batch: int,
                 lo: np.ndarray | None = None, span: np.ndarray | None = None) -> None:
        self.rows = NpyRows(path)  # its header gives the width the columns are read against
        self.rows.columns = parse_columns(columns, self.rows.width)
        self.train_rows = min(train_rows, len(self.rows))
        self.batch = batch
        self.n = max(1, self.train_rows // batch)
        self.lo, self.span = lo, span

    def __getitem__(self, i: int) -> np.ndarray:
        start = (i % self.n) * self.batch
        if start + self.batch <= self.train_rows:
            block = self.rows[start:start + self.batch]
        else:  # fewer rows than one batch: wrap within the batch
            block = self.rows.take(np.arange(start, start + self.batch) % self.train_rows)
        if self.lo is not None:
            block = np.clip((block - self.lo) / self.span, 0.0, 1.0).astype(np.float32)
        return block


__all__ = ["CHUNK_ROWS", "CurveBatches", "CurveData", "EVAL_ROWS", "MAX_TRAIN_ROWS", "curve_data",
           "synthetic_train_rows"]
