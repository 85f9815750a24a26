"""Canonical k-mers: the column order every profile in vaebench uses.

A k-mer and its reverse complement are one feature (DNA is read from either strand), so a profile has
``canonical_kmer_count(k)`` columns (8,192 at k=7), one per canonical k-mer: the smaller code of a k-mer and its
reverse complement, bases coded A=0 C=1 G=2 T=3, base 4, first base most significant. Both the synthetic
generator (``harness.synthetic``) and the data checks (``harness.data``) count through here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from harness.spec.schema import canonical_kmer_count


@lru_cache(maxsize=16)
def canonical_index(k: int) -> np.ndarray:
    """Map every k-mer code (A=0 C=1 G=2 T=3, base-4, first base most significant)
    to the column of its canonical k-mer; columns are ordered by canonical code."""
    codes = np.arange(4**k, dtype=np.int64)
    rc = np.zeros_like(codes)
    rest = codes.copy()
    for _ in range(k):
        rc = rc * 4 + (3 - rest % 4)  # complement of the last base becomes the first
        rest //= 4
    canon = np.minimum(codes, rc)
    uniq, column = np.unique(canon, return_inverse=True)
    assert len(uniq) == canonical_kmer_count(k)
    return column.astype(np.int64)


def kmer_profile(seq: np.ndarray, k: int) -> np.ndarray:
    """Canonical k-mer frequencies of one sequence of base codes (0..3)."""
    n = len(seq) - k + 1
    codes = np.zeros(n, np.int64)
    for i in range(k):
        codes = codes * 4 + seq[i : i + n]
    counts = np.bincount(canonical_index(k)[codes], minlength=canonical_kmer_count(k))
    return (counts / counts.sum()).astype(np.float32)


__all__ = ["canonical_index", "kmer_profile"]
