"""A crash-consistent Optuna journal file: a torn tail is repaired on open, a failed append leaves none.

Optuna's :class:`~optuna.storages.journal.JournalFileBackend` appends one JSON record per line and
fsyncs it, but a crash or a full disk mid-append leaves a last line cut short. Optuna's reader skips
such a line silently (a study then reads as if the record had never been written, so ``select-best``
would pick from an incomplete study without a word), and the next append lands on the partial line,
after which every read fails: the whole study is lost. This backend, built on Optuna's public
backend interface and writing Optuna's own record format, therefore:

- on open and before every append, under Optuna's journal lock (so no writer is mid-append), checks
  that the file ends in a newline; a torn tail is copied to ``<journal>.torn-<UTC time>`` and cut off,
  with a warning naming the bytes dropped (an incomplete record Optuna could never read anyway);
- rolls a failed append (ENOSPC, EDQUOT, an I/O error) back to the last complete record before
  raising, so a full disk leaves a readable journal;
- turns a corrupt line in the middle (which Optuna reports as ``ValueError``) into one line naming
  the file and the line number.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from autoft.errors import StorageError

log = logging.getLogger(__name__)

TORN_SUFFIX = ".torn-"
_PREVIEW = 120  # characters of a dropped record shown in the warning
# The operation codes of Optuna's journal records (a file format Optuna keeps readable across versions).
_OPERATIONS = {
    0: "create study",
    1: "delete study",
    2: "set study user attr",
    3: "set study system attr",
    4: "create trial",
    5: "set trial param",
    6: "set trial state/values",
    7: "set trial intermediate value",
    8: "set trial user attr",
    9: "set trial system attr",
    10: "discard trials",
}


def describe_record(torn: bytes) -> str:
    """What a (partial) journal record was, as far as its first bytes tell: "a 'create trial' record"."""
    operation = re.search(rb'"op_code":(\d+)', torn)
    trial = re.search(rb'"trial_id":(\d+)', torn)
    what = f"a {_OPERATIONS.get(int(operation.group(1)), 'unknown')!r} record" if operation else "a record"
    return f"{what} of trial id {int(trial.group(1))}" if trial else what


def _torn_tail(handle: Any) -> tuple[int, bytes]:
    """(offset of the first byte after the last newline, the bytes after it) of an open binary file."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return 0, b""
    handle.seek(size - 1)
    if handle.read(1) == b"\n":  # the common case, checked before every append: one byte read
        return size, b""
    end, chunk_size = size, 1 << 16
    while end > 0:
        start = max(0, end - chunk_size)
        handle.seek(start)
        chunk = handle.read(end - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            break
        end = start
    else:
        cut = 0
    handle.seek(cut)
    return cut, handle.read(size - cut)


def repair_torn_tail(path: str | os.PathLike[str]) -> int:
    """Cut a torn last record off ``path`` (caller holds the journal lock); returns the bytes dropped."""
    path = Path(path)
    with open(path, "r+b") as handle:
        cut, torn = _torn_tail(handle)
        if not torn:
            return 0
        backup = path.with_name(f"{path.name}{TORN_SUFFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        try:
            backup.write_bytes(torn)
            kept = f"kept in {backup}"
        except OSError as error:  # a full disk: the bytes go into the warning instead
            backup.unlink(missing_ok=True)
            kept = f"not kept ({error.strerror})"
        handle.truncate(cut)
        handle.flush()
        os.fsync(handle.fileno())
    preview = torn[:_PREVIEW].decode("utf-8", errors="replace")
    log.warning(
        "study journal %s ended in a torn record (a crash or a full disk cut its last write short): dropped "
        "%s, %d bytes, %s: %s%s",
        path,
        describe_record(torn),
        len(torn),
        kept,
        preview,
        "..." if len(torn) > _PREVIEW else "",
    )
    return len(torn)


class SafeJournalFileBackend(JournalFileBackend):
    """Optuna's journal file with torn-tail repair and rollback of failed appends (see the module doc)."""

    def __init__(self, file_path: str) -> None:
        # Our own handle on the (default) symlink lock, so the tail check and the append share it.
        self._journal_lock = JournalFileSymlinkLock(file_path)
        super().__init__(file_path, lock_obj=self._journal_lock)
        self._path = file_path
        try:
            with self._locked():
                repair_torn_tail(file_path)
        except OSError as error:
            if _torn(file_path):
                raise StorageError(
                    f"study journal {file_path} ends in a torn record and cannot be repaired here "
                    f"({error.strerror}); make it writable, or copy it to a writable folder and use that"
                ) from None
            # Nothing to repair, but a read-only place: reading is still safe, appending will say why not.

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._journal_lock.acquire()
        try:
            yield
        finally:
            self._journal_lock.release()

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        line = log_number_from
        try:
            for record in super().read_logs(log_number_from):
                line += 1
                yield record
        except ValueError as error:  # json.JSONDecodeError is one too
            raise StorageError(
                f"study journal {self._path} is corrupt after record {line} ({error}); restore it from a "
                "backup, or start a new study (another search.study_name or storage)"
            ) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        # Optuna's record format, byte for byte (JournalFileBackend.append_logs): one compact JSON per line.
        payload = ("\n".join(json.dumps(entry, separators=(",", ":")) for entry in logs) + "\n").encode("utf-8")
        with self._locked():
            repair_torn_tail(self._path)  # a writer killed mid-append left one: never append after it
            fd = os.open(self._path, os.O_WRONLY | os.O_APPEND)
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(payload)
                    while view:  # unbuffered: a short write is retried, a failed one leaves nothing buffered
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except BaseException:
                    _rollback(fd, size)  # back to the last complete record
                    raise
            finally:
                os.close(fd)


def _rollback(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as error:
        log.warning("could not cut a failed journal append back (%s); the next open repairs it", error.strerror)


def _torn(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return bool(_torn_tail(handle)[1])
    except OSError:
        return False
