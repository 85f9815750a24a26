"""The ``--data`` file, checked before any cell or curve starts: its shape against the specs, every value
finite and in [0, 1], and ``--columns`` / ``--wrap`` only beside a file. Shared by ``run``, ``matrix`` and
``curves`` (``curves`` trained every impl on NaN rows before, issue 27)."""

from __future__ import annotations

import argparse

from bench.parser import UsageError
from harness.data import DataError


def check_data(args: argparse.Namespace, widths: set[int] | None = None) -> None:
    """Fail on a bad data file before any cell starts, not in the middle of the matrix."""
    if not getattr(args, "data", None):
        if getattr(args, "columns", None) is not None:
            raise UsageError(f"--columns {args.columns} picks a block of a --data file, and there is none; "
                             "pass --data FILE.npy, or drop --columns")
        if getattr(args, "wrap", False):
            raise UsageError("--wrap lets the rows of a --data file wrap around, and there is none; "
                             "pass --data FILE.npy, or drop --wrap")
        return
    from harness.data import check_rows, open_npy, validate_file
    from harness.spec.schema import canonical_kmer_count

    arr = open_npy(args.data, args.columns)
    check_rows(arr, max(args.batch), getattr(args, "wrap", False), f"data file {args.data}")
    widths = widths or {canonical_kmer_count(args.kmer)}
    if len(widths) > 1:
        raise UsageError(f"--data {args.data} feeds every cell, but the specs take {sorted(widths)} features; "
                         "run the specs one at a time")
    expected = next(iter(widths))
    if arr.shape[1] != expected:
        what = (f"k={args.kmer} has {expected} canonical k-mers" if args.kmer is not None
                and canonical_kmer_count(args.kmer) == expected else f"the spec takes {expected} features")
        raise DataError(f"data file {args.data} has {arr.shape[1]} columns but {what}; "
                        "pick the block with --columns A:B")
    validate_file(arr, f"data file {args.data}")
