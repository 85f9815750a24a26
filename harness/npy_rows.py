"""Rows of a ``.npy`` file read with ``pread``, not through a memory map.

A memory map keeps every page it has touched mapped into the process: a pass over a 1.6 GiB training set (dense,
k=7, 51,200 rows) left the curves' parent at 1.7 GiB of RSS (file-backed, but counted, and held until the map
closes). Reading blocks into fresh arrays leaves the pages to the kernel's page cache, which gives them back
under pressure, and the process holds one block at a time. Used for the curves' training rows
(``harness.run.curve_data``) and their per-feature range (``feature_range``).

A Fortran-ordered file (rows not contiguous) falls back to a read-only memmap.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class NpyRows:
    """``rows[a:b]`` and ``rows.take(indices)`` of a 2-D ``.npy`` file, as float32 arrays of the chosen columns."""

    def __init__(self, path: str | Path, columns: slice | None = None) -> None:
        self.path = str(path)
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
            self.offset = f.tell()
        if len(shape) != 2:
            raise ValueError(f"{self.path} has shape {shape}; rows need a 2-D array")
        self.n_rows, self.width = shape
        self.dtype = np.dtype(dtype)
        self.columns = columns or slice(0, self.width)
        self._mmap = np.load(self.path, mmap_mode="r") if fortran else None
        self._fd = None if fortran else os.open(self.path, os.O_RDONLY)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, len(range(*self.columns.indices(self.width)))

    def __len__(self) -> int:
        return self.n_rows

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, step = rows.indices(self.n_rows)
        if step != 1:
            raise ValueError("NpyRows reads contiguous rows only")
        if self._mmap is not None:
            return np.array(self._mmap[start:stop, self.columns], dtype=np.float32)
        n = max(0, stop - start)
        row_bytes = self.width * self.dtype.itemsize
        buf = os.pread(self._fd, n * row_bytes, self.offset + start * row_bytes)
        block = np.frombuffer(buf, dtype=self.dtype).reshape(n, self.width)
        return np.asarray(block[:, self.columns], dtype=np.float32)

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at ``indices`` (in order; for a batch that wraps around the end)."""
        return np.concatenate([self[int(i):int(i) + 1] for i in indices]) if len(indices) else \
            np.empty((0, self.shape[1]), np.float32)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


def feature_range(rows: NpyRows, chunk_rows: int = 4096, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max) of the first ``stop`` rows (default all), one block of ``chunk_rows`` at a time."""
    stop = len(rows) if stop is None else min(stop, len(rows))
    if stop <= 0:
        raise ValueError(f"{rows.path} has no rows to take a range over")
    lo = np.full(rows.shape[1], np.inf, np.float32)
    hi = np.full(rows.shape[1], -np.inf, np.float32)
    for start in range(0, stop, chunk_rows):
        block = rows[start:min(stop, start + chunk_rows)]
        np.minimum(lo, block.min(0), out=lo)
        np.maximum(hi, block.max(0), out=hi)
    return lo, hi


__all__ = ["NpyRows", "feature_range"]
