"""The base of every part of the typed row (``harness.row``): a dataclass over some keys of a flat mapping.

It lives apart from ``harness.row`` so that a part defined in a module of its own (``harness.placement``: where
a cell ran) can build on it, and ``harness.row`` can register that part without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, ClassVar


class _Part:
    """A dataclass over some keys of a mapping; keys it does not name are kept in ``rest``.

    ``_present`` remembers which named keys the mapping had, so a failed row, which has no
    ``step_stats``, is written back without one (a missing key and a null are different facts)."""

    #: ``(attribute, stored key)`` where the two differ
    RENAMED: ClassVar[dict[str, str]] = {}

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if not f.name.startswith("_") and f.name != "rest"]

    @classmethod
    def _key(cls, name: str) -> str:
        return cls.RENAMED.get(name, name)

    @classmethod
    def take(cls, d: Mapping[str, Any], keep_rest: bool = True):
        names = cls._names()
        kwargs = {n: d[cls._key(n)] for n in names if cls._key(n) in d}
        obj = cls(**kwargs)
        obj._present = frozenset(kwargs)
        if keep_rest and hasattr(obj, "rest"):
            known = {cls._key(n) for n in names}
            obj.rest = {k: v for k, v in d.items() if k not in known}
        return obj

    def keys_taken(self) -> set[str]:
        return {self._key(n) for n in self._names()}

    def dump(self) -> dict[str, Any]:
        out = {self._key(n): getattr(self, n) for n in self._names()
               if n in self._present or getattr(self, n) is not None}
        out.update(getattr(self, "rest", {}) or {})
        return out
