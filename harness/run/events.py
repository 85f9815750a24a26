"""Progress events from a worker to its parent: one JSON object per stdout line.

Its own module so that the cell (which reports its phases) and the worker
entry point (which runs the cell) do not import each other.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def emit(**event: Any) -> None:
    """One progress event for the parent (JSON on one stdout line)."""
    sys.stdout.write(json.dumps(event, default=float) + "\n")
    sys.stdout.flush()
