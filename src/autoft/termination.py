"""SIGTERM handled like Ctrl-C: Kubernetes stops a pod with SIGTERM and kills it 30 s later.

:func:`handle_sigterm` makes SIGTERM raise :class:`Terminated` in the main thread. It is a
:class:`KeyboardInterrupt`, so every cleanup that already handles Ctrl-C (a trial told FAIL, atomic
writes, the run folder's status, MLflow runs ended) handles SIGTERM the same way; the CLI then prints
one line and exits 143 (128 + SIGTERM), and ``run_status.json`` says ``terminated``.

Child processes (forked pipeline steps, torchrun and its ranks) get the signal forwarded and are given
:data:`CHILD_GRACE_S` to finish first, well inside Kubernetes' default 30 s grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, what a shell reports for a process ended by SIGTERM
CHILD_GRACE_S = 20.0
MESSAGE = (
    "terminated (SIGTERM): every file written so far is complete; run the command again (or retry the step) to continue"
)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised like Ctrl-C so the same cleanups run."""


_terminating = False


def _forward_to_children() -> None:
    """SIGTERM to every process below this one, then wait (bounded) until they are gone."""
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.send_signal(signal.SIGTERM)
    with contextlib.suppress(psutil.Error):
        psutil.wait_procs(children, timeout=CHILD_GRACE_S)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _terminating
    if _terminating:  # a second SIGTERM (e.g. forwarded by a parent and by torchrun) must not cut the cleanup
        return
    _terminating = True
    _forward_to_children()
    raise Terminated


def handle_sigterm() -> Any:
    """Raise :class:`Terminated` on SIGTERM (main thread only; elsewhere Python cannot install handlers).

    Returns the handler it replaced (None when not installed), for a caller that restores it.
    """
    global _terminating
    if threading.current_thread() is not threading.main_thread():
        return None
    _terminating = False
    return signal.signal(signal.SIGTERM, _on_sigterm)


def terminated_exits_143() -> None:
    """For processes without the CLI's error boundary (a KFP step run by kfp's executor): an uncaught
    :class:`Terminated` prints one line and ends the process with exit status 143, after the exit hooks
    (MLflow ends its runs in one) have run."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        if not issubclass(kind, Terminated):
            previous(kind, error, tb)
            return
        print(MESSAGE, file=sys.stderr)
        # os._exit skips the exit hooks, and sys.exit cannot set 143 from an excepthook.
        atexit._run_exitfuncs()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(EXIT_TERMINATED)

    sys.excepthook = hook
    handle_sigterm()


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind ``error``: itself, or one that an error raised in a cleanup hides."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__context__
    return None
