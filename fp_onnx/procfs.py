"""Reading one field of a Linux /proc file (`Key: value ...` lines), or None where there is none.

Why a module: the umask (for written files' permissions) and the available memory (for the
memory budget) are both read this way; elsewhere than Linux the callers fall back.
"""
from __future__ import annotations

from pathlib import Path


def proc_field(path: str, key: str) -> str | None:
    """The first word after `key` on the line of `path` that starts with it; None when the file or the
    line is missing or unreadable."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                words = line[len(key):].split()
                return words[0] if words else None
    except OSError:
        pass
    return None
