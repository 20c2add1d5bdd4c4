"""Outputs never destroy inputs: where a command may write, and one writer at a time.

Every ``--out`` of the CLI goes through :func:`check_output` before compute (a local path, not an input
or inside one, a file where a file is expected, nothing finished replaced without ``--overwrite``) and is
written under :func:`output_lock`, an advisory ``flock`` on a hidden lock file beside it. The kernel drops
the lock when its process dies, so a killed writer's lock is taken over by the next run; the file is
removed when the writer finishes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from autoft.errors import ConfigError
from autoft.urls import check_location, is_gcs

# Files that mark a folder as an artifact other steps read; nothing is written inside one.
ARTIFACT_MARKERS = {"data.json": "prepared data", "model_card.json": "a saved model"}


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def check_output(
    out: str | os.PathLike[str],
    kind: Literal["file", "folder"],
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
    where: str = "--out",
) -> Path:
    """``out`` as a local path that overwrites no input; raises ConfigError naming both otherwise."""
    if not str(out).strip():
        raise ConfigError(f"{where} is empty; give a path (an empty one would write into the current folder)")
    check_location(str(out), where, gcs=False, what="a local path")
    path = Path(out).expanduser()
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise ConfigError(f"{where} {out}: {blocking} is a file, not a folder; pick another {where}")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{where} {out} is a folder; give a file path, e.g. {path.with_name(path.name + '.json')}")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(f"{where} {out} is a file; give a folder (new or one this command wrote)")
    target = _resolved(path)
    for name, given in (inputs or {}).items():
        if not given or is_gcs(str(given)):
            continue
        source = _resolved(given)
        if target == source or (target.is_relative_to(source) and source.is_dir()):
            what = "is" if target == source else "is inside"
            raise ConfigError(
                f"{where} {out} {what} the input {name} {given}: writing there would destroy it; pick another {where}"
            )
    for folder in target.parents:
        marker = next((name for name in ARTIFACT_MARKERS if (folder / name).is_file()), None)
        if marker is not None:
            raise ConfigError(
                f"{where} {out} is inside {folder}, which holds {ARTIFACT_MARKERS[marker]} ({marker}): writing there "
                f"would mix outputs into it; pick another {where}"
            )
    return path


def refuse_finished(path: Path, marker: str, what: str, overwrite: bool, hint: str = "") -> None:
    """A finished output (``marker`` exists in or as ``path``) is not replaced unless ``--overwrite``."""
    found = path if marker == "" else path / marker
    if overwrite or not found.exists() or (found.is_dir() and not any(found.iterdir())):
        return
    also = f"{hint}, " if hint else ""
    raise ConfigError(
        f"{path} already holds {what} ({found.name}); {also}--overwrite replaces it, or pick another --out"
    )


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.autoft-lock"


@contextmanager
def output_lock(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the advisory lock of output ``out`` (a file or a folder) for the block; a second writer fails."""
    out = Path(out).expanduser()
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        handle = open(path, "a+")  # noqa: SIM115  (held open for the whole block)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"{out} is being written by another autoft process (pid {owner}; lock {path}); wait for it to "
                "finish or pick another output"
            ) from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder removed while we waited to lock it
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)
        handle.close()
