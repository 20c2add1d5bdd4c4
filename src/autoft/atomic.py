"""Atomic local writes: a temporary file beside the target, renamed into place only when complete.

A crash, a full disk or Ctrl-C therefore never leaves a half-written file under a final name. Files
get the mode a plain ``open()`` would give them (0666 minus the umask), not ``mkstemp``'s private
0600, so shared caches stay readable.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _process_umask() -> int:
    """The umask, read without changing it where Linux shows it (``/proc/self/status``, kernel >= 4.7).

    ``os.umask`` can only be read by setting it; doing that per write races with threads creating files
    in between (they would get mode 0666). So it is read once, at import, before any worker thread runs.
    """
    try:
        match = re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1), 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


UMASK = _process_umask()
FILE_MODE = 0o666 & ~UMASK


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Indented JSON, written atomically; numpy scalars and other number types become floats."""
    return atomic_write_text(path, json.dumps(payload, indent=1, default=float))
