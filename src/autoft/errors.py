"""The errors a user can act on, in one leaf module every layer may import.

Each names the bad input and the fix. The CLI turns any :class:`AutoFTError` into one line on stderr
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutoFTError(Exception):
    """A problem with the user's input or environment that the message tells them how to fix."""


class ConfigError(AutoFTError, ValueError):
    """A configuration value is missing, misspelt or out of range."""


class DataError(AutoFTError, ValueError):
    """Data is missing or malformed; the message says where we looked and how to fix it."""


class CheckpointError(AutoFTError, ValueError):
    """A checkpoint is missing, corrupt or does not fit the model; the message names the file."""


class StorageError(AutoFTError, RuntimeError):
    """A storage location is malformed or unreachable; the message names the URI."""


class StorageNotFound(StorageError, FileNotFoundError):
    """The object or path does not exist (also a FileNotFoundError, so local-style handlers work)."""


class SearchFailed(AutoFTError, RuntimeError):
    """The search cannot go on (too many failed trials, or no completed trial to choose from)."""


def caused_by_interrupt(error: BaseException) -> bool:
    """Whether Ctrl-C is behind ``error``: KeyboardInterrupt itself, or an error raised while handling it.

    A Ctrl-C that lands inside a library's cleanup (Optuna's journal lock unlinking its lock file, say)
    surfaces as that cleanup's own error, with the KeyboardInterrupt as its context; it is still Ctrl-C.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__context__
    return False


def disk_error_behind(error: BaseException, errnos: frozenset[int]) -> OSError | None:
    """The OSError with one of ``errnos`` behind ``error``: itself, its cause, or the error it interrupted.

    A full disk inside Optuna's trial bookkeeping surfaces as Optuna's own ``AssertionError`` with the
    ``OSError`` as its context; the disk is still the cause, and the user's fix is the same.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in errnos:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: these hyperparameters diverge (a failed trial, not a user error)."""
