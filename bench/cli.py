"""``python -m bench VERB``: one verb per question the user asks.

Every user error (bad spec, flag, data file, missing framework) ends as one
line on stderr and exit status 2; the parent process never imports a
framework, workers do.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from harness.adapter import BUILTIN
from harness.data import DataError
from harness.presets import PRESETS, resolve_spec
from harness.spec import SpecError

DEFAULT_IMPLS = ["torch", "flax", "keras-jax", "keras-torch", "keras-tensorflow"]


class UsageError(ValueError):
    """A flag the user can fix; printed as one line."""


def split_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def kmer_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--kmer takes a positive integer such as 7, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--kmer must be at least 1, got {value}")
    return value


def _impls(text: str | None) -> list[str]:
    impls = split_list(text) if text else list(DEFAULT_IMPLS)
    for impl in impls:
        if impl not in BUILTIN and ":" not in impl:
            raise UsageError(f"unknown impl {impl!r}; built-in impls are {', '.join(BUILTIN)}, "
                             "or pass path/to/file.py:Class or module:attr")
    return impls


def _specs(text: str | None, default: list[str]) -> list[str]:
    return split_list(text) if text else default


# ------------------------------------------------------------------------- verbs


def cmd_params(args: argparse.Namespace) -> int:
    from harness.parity import check_params

    reports = []
    for name in _specs(args.spec, list(PRESETS)):
        spec = resolve_spec(name, kmer=args.kmer)
        reports.append(check_params(spec, _impls(args.impl)))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_params

        print_params(reports, args.kmer)
    return 0 if all(r.equal for r in reports) else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from harness.parity import check_parity

    reports = []
    for name in _specs(args.spec, ["dense", "conv-final", "conv-revised"]):
        spec = resolve_spec(name, kmer=args.kmer)
        reports.append(check_parity(spec, args.kmer, _impls(args.impl), batch=args.batch))
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        from bench.render import print_parity

        print_parity(reports)
    return 0 if all(r.passed for r in reports) else 1


VERBS: dict[str, Callable[[argparse.Namespace], int]] = {
    "params": cmd_params,
    "parity": cmd_parity,
}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; the user needs only the error line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="vaebench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("params", help="trainable and non-trainable counts per impl, and whether they agree")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--spec", help="preset name(s) or spec file(s), comma-separated (default: all presets)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("parity", help="same weights in every impl: compare outputs, loss, gradients, one Adam step")
    p.add_argument("--kmer", type=kmer_arg, required=True)
    p.add_argument("--spec", help="preset name(s) or spec file(s) (default: dense,conv-final,conv-revised)")
    p.add_argument("--impl", help=f"comma-separated impls (default: {','.join(DEFAULT_IMPLS)})")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed one line
        return int(exc.code or 0)
    try:
        return VERBS[args.verb](args)
    except (SpecError, DataError, UsageError) as exc:
        print(f"vaebench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaebench: interrupted; results written so far are kept (use --resume)", file=sys.stderr)
        return 130
