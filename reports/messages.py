"""Identical messages said once: messages that differ only in their numbers are grouped, and each number
that differs is shown as its range ("would need 27.6–31.0 GB of 24.5 GB"), so that five impls skipped for
the same reason read as one line. Knows nothing about benchmarks beyond an impl's name.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

__all__ = ["NUMBER", "group_messages", "merge_numbers", "template", "who"]

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")


def template(text: str) -> str:
    """The message with every number replaced by ``#``: the key messages are grouped by."""
    return NUMBER.sub("#", " ".join(str(text).split()))


def _value(s: str) -> float:
    return float(s.replace(",", ""))


def merge_numbers(texts: list[str]) -> str:
    """Messages of one template as one: a number equal in all stays, one that differs reads ``low–high``."""
    texts = [" ".join(str(t).split()) for t in texts]
    if len(set(texts)) == 1:
        return texts[0]
    parts = [NUMBER.split(t) for t in texts]
    nums = [NUMBER.findall(t) for t in texts]
    out = []
    for i, piece in enumerate(parts[0]):
        out.append(piece)
        if i < len(nums[0]):
            vals = [n[i] for n in nums]
            if len(set(vals)) == 1:
                out.append(vals[0])
            else:
                lo, hi = min(vals, key=_value), max(vals, key=_value)
                out.append(f"{lo}–{hi}")
    return "".join(out)


def group_messages(items: Iterable[tuple[Any, str]]) -> list[tuple[list[Any], str]]:
    """``(key, message)`` pairs as ``[(keys, merged message)]``, one per template, in first-seen order."""
    groups: dict[str, tuple[list[Any], list[str]]] = {}
    for key, msg in items:
        keys, msgs = groups.setdefault(template(msg), ([], []))
        keys.append(key)
        msgs.append(msg)
    return [(keys, merge_numbers(msgs)) for keys, msgs in groups.values()]


def who(impls: list[str], all_impls: list[str]) -> str:
    """"all 5 impls" when every impl of the run is named, else the names (each once, in order)."""
    names = list(dict.fromkeys(impls))
    if len(all_impls) > 1 and set(names) >= set(all_impls):
        return f"all {len(all_impls)} impls"
    return ", ".join(names)
