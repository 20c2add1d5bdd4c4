"""Worker leases: one live search worker per worker index, recorded in the study itself.

A pod and its KFP retry can both be alive (the first one was only unreachable, or slow to die). Both
would run the same share of the budget, and the study would end with more trials than ``n_trials``.
So a worker holds a lease on its index for as long as it runs: the study user attr
``lease:worker-<i>`` = ``{token, host, pid, started, expires}``, renewed every :data:`RENEW_S` by a
background thread. Reading and writing a lease happens under a mutex the storage offers (an ``flock``
beside a journal or SQLite file, a PostgreSQL advisory lock, MySQL's ``GET_LOCK``), so two workers
starting at the same moment cannot both win.

A worker starting with an index whose lease is held:

- takes it over when the holder is gone: the lease expired, or the holder ran on this host and its
  process no longer exists;
- exits with one line when the holder is alive: a process of this host that still exists, or one of
  another host that renews its lease while this worker waits (at most :data:`TTL_S`).

A worker that loses its lease (it stalled past the expiry and another took over) stops before its
next trial counts: the lease is checked before and after every trial.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import psutil

from autoft.errors import AutoFTError
from autoft.urls import database_url, is_rdb_url, redact_url

log = logging.getLogger(__name__)

LEASE_ATTR = "lease:worker-{index}"
TTL_S = 60.0  # a lease not renewed for this long belongs to a dead (or frozen) worker
RENEW_S = 10.0  # well inside TTL_S: a worker whose renewals are late under load keeps its index
MUTEX_SUFFIX = ".lease-lock"
_HELD_HERE: set[str] = set()  # tokens of the leases this process holds now (a worker may run in a thread)


class WorkerConflict(AutoFTError, RuntimeError):
    """Another live process runs this worker index (or took it over); this one must stop."""


@dataclass(frozen=True)
class LeaseRecord:
    token: str
    host: str
    pid: int
    started: float  # the holder process's start time: a recycled pid is not the holder
    expires: float

    @classmethod
    def parse(cls, value: Any) -> LeaseRecord | None:
        try:
            return cls(**{key: value[key] for key in ("token", "host", "pid", "started", "expires")})
        except (TypeError, KeyError):
            return None

    def expired(self, now: float) -> bool:
        return now >= self.expires

    def local_holder_alive(self) -> bool | None:
        """For a holder on this host: whether its process still exists; None for another host."""
        if self.host != _host():
            return None
        if self.pid == os.getpid():  # this process: alive only if a worker in it still holds the lease
            return self.token in _HELD_HERE
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except psutil.Error:
            return False

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host.split('/')[0]}"


def _host() -> str:
    """This machine and pid namespace: containers sharing a host name (``--network host``) number their
    processes independently, so a pid only identifies a process together with its namespace."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}" if namespace else socket.gethostname()


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Mutex:
    """Mutual exclusion over the lease records of one study, by the means its storage offers."""

    def __init__(self, storage: str, key: str) -> None:
        self.storage, self.key = storage, key
        self._engine: Any = None
        if is_rdb_url(storage) and not storage.startswith("sqlite"):
            import sqlalchemy

            self._engine = sqlalchemy.create_engine(database_url(storage), poolclass=sqlalchemy.pool.NullPool)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._engine is None:
            path = self.storage.split(":///", 1)[1] if self.storage.startswith("sqlite") else self.storage
            with _flock(Path(path).with_name(Path(path).name + MUTEX_SUFFIX)):
                yield
            return
        import sqlalchemy

        with self._engine.connect() as connection:
            if self._engine.dialect.name == "postgresql":
                # A transaction-level advisory lock: released at commit, or when the connection dies.
                number = int.from_bytes(hashlib.sha256(self.key.encode()).digest()[:8], "big", signed=True)
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:k)"), {"k": number})
                yield
                connection.commit()
            else:  # MySQL
                connection.execute(sqlalchemy.text("SELECT GET_LOCK(:k, -1)"), {"k": self.key[:64]})
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": self.key[:64]})

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def read_lease(study: optuna.Study, index: int) -> LeaseRecord | None:
    return LeaseRecord.parse(study.user_attrs.get(LEASE_ATTR.format(index=index)))


def live_lease_holders(study: optuna.Study, now: float | None = None) -> dict[int, LeaseRecord]:
    """The worker indices whose lease has not expired, with their holder."""
    now = time.time() if now is None else now
    prefix = LEASE_ATTR.format(index="")
    found = {}
    for key, value in study.user_attrs.items():
        record = LeaseRecord.parse(value) if key.startswith(prefix) else None
        if record is not None and not record.expired(now):
            found[int(key.removeprefix(prefix))] = record
    return found


class WorkerLease:
    """This process's lease on worker ``index`` of ``study`` (stored at ``storage``); a context manager."""

    def __init__(self, study: optuna.Study, storage: str, index: int) -> None:
        self.study, self.storage, self.index = study, storage, index
        self.attr = LEASE_ATTR.format(index=index)
        self.mine = LeaseRecord(
            token=uuid.uuid4().hex,
            host=_host(),
            pid=os.getpid(),
            started=psutil.Process().create_time(),
            expires=0.0,
        )
        self._mutex = _Mutex(storage, f"autoft:{study.study_name}:{self.attr}")
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquire -------------------------------------------------------------------------------------

    def _conflict(self, holder: LeaseRecord) -> WorkerConflict:
        return WorkerConflict(
            f"search worker {self.index} of study {self.study.study_name!r} in {redact_url(self.storage)} is "
            f"already running ({holder.describe()}); stop it, or start this one with another --worker-index"
        )

    def _write(self) -> None:
        record = LeaseRecord(**{**asdict(self.mine), "expires": time.time() + TTL_S})
        self.study.set_user_attr(self.attr, asdict(record))

    def acquire(self) -> None:
        """Hold the lease, taking over a dead holder's; :class:`WorkerConflict` if a live one holds it."""
        waited_for: LeaseRecord | None = None
        while True:
            with self._mutex.held():
                holder = read_lease(self.study, self.index)
                now = time.time()
                alive = None if holder is None else holder.local_holder_alive()
                if holder is None or holder.token == self.mine.token or holder.expired(now) or alive is False:
                    if holder is not None and holder.token != self.mine.token and not holder.expired(now):
                        log.warning("worker %d: its previous process (%s) is gone", self.index, holder.describe())
                    self._write()
                    _HELD_HERE.add(self.mine.token)
                    break
                if alive or (waited_for is not None and holder.expires != waited_for.expires):
                    raise self._conflict(holder)  # on this host and running, or renewed while we waited
            if waited_for is None:
                log.warning(
                    "worker %d: a lease held by %s; waiting up to %.0f s to see whether it is alive",
                    self.index,
                    holder.describe(),
                    holder.expires - now,
                )
                waited_for = holder
            self._stop.wait(min(1.0, max(0.05, holder.expires - now)))
        self._thread = threading.Thread(target=self._renew, name=f"lease-worker-{self.index}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                with self._mutex.held():
                    holder = read_lease(self.study, self.index)
                    if holder is None or holder.token != self.mine.token:
                        self._lost.set()
                        return
                    self._write()
            except Exception as error:  # a storage hiccup: the next renewal tries again before expiry
                log.warning("worker %d: could not renew its lease (%s)", self.index, error)

    # -- while running ---------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`WorkerConflict` if another process holds this index now."""
        holder = read_lease(self.study, self.index)
        if self._lost.is_set() or holder is None or holder.token != self.mine.token:
            raise WorkerConflict(
                f"search worker {self.index} lost its lease on study {self.study.study_name!r} to "
                f"{holder.describe() if holder else 'another process'}; this process stops so that the trial "
                "budget is not run twice"
            )

    def release(self) -> None:
        _HELD_HERE.discard(self.mine.token)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self._mutex.held():
                holder = read_lease(self.study, self.index)
                if holder is not None and holder.token == self.mine.token:
                    self.study.set_user_attr(self.attr, {**asdict(self.mine), "expires": 0.0})
        except Exception as error:  # e.g. a full disk: the lease then simply expires
            log.debug("worker %d: lease not released (%s); it expires by itself", self.index, error)
        finally:
            self._mutex.close()

    def __enter__(self) -> WorkerLease:
        try:
            self.acquire()
        except BaseException:
            self._mutex.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
