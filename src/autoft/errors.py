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


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite: these hyperparameters diverge (a failed trial, not a user error)."""
