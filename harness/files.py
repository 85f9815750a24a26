"""What kind of file a path names, asked of ``stat`` before anything opens it for reading.

Only regular files are read. Opening a FIFO for reading blocks until a writer comes (a FIFO given as
``--spec`` or ``--data`` hung the command without a word), and a directory, a device or a socket fails
deep in a reader with a traceback; each gets one line naming the path and what it is instead (issue 27).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_regular(path: str | Path) -> str | None:
    """None for a regular file (through symlinks); else what the path is, as a phrase ("a FIFO (named
    pipe)", "a symbolic link loop", "missing", "unreadable: Permission denied")."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "missing"
        return f"unreadable: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


#: the environment variable naming vaebench's per-machine cache (matmul peaks, footprints, synthetic data)
CACHE_ENV = "VAEBENCH_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$VAEBENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/vaebench``, else ``~/.cache/vaebench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaebench"
