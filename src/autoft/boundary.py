"""The one error boundary of every entry point: an exception a user can cause or meet -> one line + exit code.

The CLI (`autoft ...`, `autoft step ...`, `autoft run`) ends every failure here. :class:`AutoFTError` is
the user's input (exit 2); a database, server, cloud or disk that is unreachable, full or refuses is the
environment (exit 1); a corrupt file the user gave is input again (exit 2). Library errors are recognised
by their class names along the exception chain, so nothing here imports SQLAlchemy, requests, kfp or torch.
Anything else is a bug and keeps its traceback. Every line is passed through
:func:`autoft.urls.redact_text`: a password in a URL inside a library's message is never printed.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator

from autoft.errors import AutoFTError
from autoft.urls import redact_text

EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
MAX_LINE = 400
# A full, read-only or forbidden disk: the environment, not a bug.
DISK_ERRORS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM})

# (class name along the MRO as "module.Name" prefix match, exit code, what failed)
_UNREACHABLE = (
    ("sqlalchemy.exc.OperationalError", "the database"),
    ("sqlalchemy.exc.InterfaceError", "the database"),
    ("psycopg2.OperationalError", "the database"),
    ("optuna.exceptions.StorageInternalError", "the study storage"),
    ("requests.exceptions.ConnectionError", "the server"),
    ("requests.exceptions.Timeout", "the server"),
    ("urllib3.exceptions.MaxRetryError", "the server"),
    ("urllib3.exceptions.NewConnectionError", "the server"),
    ("urllib3.exceptions.ProtocolError", "the server"),
    ("kfp_server_api.exceptions.ApiException", "Kubeflow Pipelines"),
    ("kfp_server_api.exceptions.ApiTypeError", "Kubeflow Pipelines"),
    ("mlflow.exceptions.MlflowException", "MLflow"),
    ("google.api_core.exceptions.GoogleAPIError", "Google Cloud"),
    ("google.auth.exceptions.GoogleAuthError", "Google Cloud credentials"),
    ("builtins.ConnectionError", ""),  # our own wrappers name the resource themselves
    ("builtins.TimeoutError", ""),
)
_BAD_INPUT = (
    ("autoft.errors.NonFiniteLossError", "training diverged (lower the learning rate: finetune.lr or search.base_lr)"),
    ("sqlalchemy.exc.ArgumentError", "a database URL"),
    ("sqlalchemy.exc.NoSuchModuleError", "a database URL"),
    ("zipfile.BadZipFile", "a corrupt file"),
    ("_pickle.UnpicklingError", "a corrupt file"),
    ("safetensors_rust.SafetensorError", "a corrupt weights file"),
    ("json.decoder.JSONDecodeError", "a corrupt JSON file"),
    ("pydantic_core._pydantic_core.ValidationError", "a file of the wrong schema"),
    ("yaml.error.YAMLError", "a YAML document"),
    ("builtins.UnicodeDecodeError", "a text file that is not UTF-8"),
)
_FILE_ERRORS = {
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, where a file is expected",
    errno.ENOTDIR: "is not a folder",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "name too long",
    errno.ELOOP: "too many levels of symbolic links",
}


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _names(error: BaseException) -> list[str]:
    return [f"{cls.__module__}.{cls.__name__}" for cls in type(error).__mro__]


def _first_line(error: BaseException) -> str:
    # SQLAlchemy wraps the driver's error; the driver's own first line names the host and the reason.
    inner = getattr(error, "orig", None)
    text = str(inner if isinstance(inner, BaseException) else error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    line = lines[0]
    # kfp's ApiException starts "(status)\nReason: ..."; keep the reason too.
    if len(lines) > 1 and line.startswith("(") and line.endswith(")"):
        line = f"{line} {lines[1]}"
    return line


def one_line(text: str) -> str:
    """A message as one line (newlines folded), credentials redacted, at most ``MAX_LINE`` characters."""
    line = redact_text(" ".join(str(text).split()))
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 3] + "..."


def describe(error: BaseException) -> tuple[int, str] | None:
    """``(exit code, one line)`` for a failure a user can cause or meet; None for a bug (keep the traceback)."""
    for link in _chain(error):
        if isinstance(link, AutoFTError):
            return getattr(link, "exit_code", EXIT_USER_ERROR), one_line(f"error: {link}")
    for link in _chain(error):
        names = _names(link)
        for prefix, what in _UNREACHABLE:
            if prefix in names:
                prefix = f"cannot use {what}: " if what else ""
                return EXIT_FAILURE, one_line(
                    f"error: {prefix}{_first_line(link)} ({type(link).__name__}); check the address and that it is "
                    "up, then run the command again (-v shows the traceback)"
                )
        for prefix, what in _BAD_INPUT:
            if prefix in names:
                return EXIT_USER_ERROR, one_line(
                    f"error: {what}: {_first_line(link)} ({type(link).__name__}); -v shows the traceback"
                )
        if isinstance(link, OSError) and link.errno in DISK_ERRORS:
            where = f" {link.filename}" if link.filename else ""
            return EXIT_FAILURE, one_line(
                f"error: cannot write{where}: {link.strerror}; free space or pick a writable folder, then run the "
                "command again (nothing half-written was left under a final name)"
            )
        if isinstance(link, OSError) and link.errno in _FILE_ERRORS:
            where = f"{link.filename}: " if link.filename else ""
            return EXIT_USER_ERROR, one_line(f"error: {where}{_FILE_ERRORS[link.errno]} ({link.strerror})")
        if isinstance(link, MemoryError):
            return EXIT_FAILURE, "error: out of memory; use smaller batches (data.batch_size, data.eval_batch_size)"
    return None
