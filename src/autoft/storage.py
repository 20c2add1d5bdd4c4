"""Local paths and ``gs://`` URIs behind one small API, with atomic writes.

Local writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written file. ``gs://`` objects go through google-cloud-storage (which honours
STORAGE_EMULATOR_HOST for a local emulator); uploads of a finished local file are atomic by nature.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GCS_SCHEME = "gs://"


class StorageError(RuntimeError):
    """A storage location is malformed or unreachable; the message names the URI."""


def is_gcs(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; rejects URIs without a bucket."""
    if not is_gcs(uri):
        raise StorageError(f"not a gs:// URI: {uri!r}")
    bucket, _, blob = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"gs:// URI without a bucket: {uri!r}; use gs://BUCKET/PATH")
    return bucket, blob


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
