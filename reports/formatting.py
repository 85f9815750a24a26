"""Number and text formatting shared by the report's modules: times, byte rates, Markdown-safe snippets
and file-name slugs. Every figure the report prints goes through here, so the Markdown, the HTML and the
recommendation's prose spell numbers the same way.

Framework-free: this module must never import torch, jax, keras or tensorflow.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from harness.diagnose.leak import format_bytes

if TYPE_CHECKING:
    from reports.cells import ImplCell

__all__ = ["code", "fmt_mem", "fmt_rate", "fmt_sps", "fmt_time", "join_and", "short", "slugify"]


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def fmt_sps(c: ImplCell) -> str:
    return f" ({c.samples_per_s:,.0f} samples/s)" if c.samples_per_s else ""


def fmt_mem(c: ImplCell) -> str:
    return (format_bytes(c.peak_bytes) + (" RSS" if c.cpu_standin else "")) if c.peak_bytes is not None else "n/a"


def fmt_time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "n/a"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_rate(b: float | None) -> str:
    return "n/a" if b is None else f"{format_bytes(b)}/batch"


def short(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def code(text: str) -> str:
    text = " ".join(str(text).split()).replace("`", "'")
    return f"`{text}`" if text else ""


def slugify(text: str) -> str:
    """A file or folder name from any text: letters, digits, ``_``, ``.`` and ``-``, never starting with a dot,
    so a run id of ``..`` (read from a row) cannot name the folder above the report's (issue 27: a results file
    whose rows said ``"run_id": ".."`` made ``report --out D/out`` write into ``D/`` and delete its plots)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_").lstrip(".") or "x"
