"""URLs and URIs as text: gs:// paths, database URLs for SQLAlchemy, and hiding passwords.

No I/O and no heavy imports, so config validation and the study steps can use them freely.
"""

from __future__ import annotations

import importlib.util
import os
import re
from urllib.parse import urlsplit, urlunsplit

from autoft.errors import ConfigError, StorageError

GCS_SCHEME = "gs://"
# SQLAlchemy dialects Optuna's RDBStorage accepts; anything else with "://" is not a study storage.
RDB_PREFIXES = ("sqlite:", "postgresql", "mysql", "oracle", "mssql")


def is_gcs(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; rejects URIs without a bucket."""
    if not is_gcs(uri):
        raise StorageError(f"not a gs:// URI: {uri!r}")
    bucket, _, blob = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"gs:// URI without a bucket: {uri!r}; use gs://BUCKET/PATH")
    return bucket, blob


def join_uri(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or a gs:// URI with the right separator."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(str(base), *parts)


def is_rdb_url(storage: str) -> bool:
    return storage.startswith(RDB_PREFIXES)


JOURNAL_SUFFIX = ".journal"
_URL_TYPO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:?/{2}|^[A-Za-z][A-Za-z0-9+.-]*:[^/]|@")


def check_study_storage(storage: str, where: str) -> str:
    """An Optuna storage must be an RDB URL or a ``*.journal`` file; a typo must not become a local file."""
    if not storage.strip():
        raise ConfigError(f"{where} is empty: give a journal file (*.journal) or a database URL (postgresql://...)")
    if "://" in storage:
        if not is_rdb_url(storage):
            scheme = storage.split("://", 1)[0]
            raise ConfigError(
                f"{where} {redact_url(storage)!r}: {scheme}:// is not a database Optuna can use; allowed: "
                "postgresql://, mysql://, sqlite:/// or a local *.journal file"
            )
        return storage
    if _URL_TYPO.search(storage):
        raise ConfigError(
            f"{where} {redact_url(storage)!r} looks like a mistyped database URL (no '://'); write e.g. "
            "postgresql://user@host/db, or give a local *.journal file"
        )
    if not storage.endswith(JOURNAL_SUFFIX):
        raise ConfigError(f"{where} {storage!r}: a local study storage is a journal file whose name ends in .journal")
    return storage


def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password if "://" in url else None
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """Hide a password in a URL (database or HTTP basic auth) before it reaches a message or a log."""
    password = url_password(url)
    if not password:
        return url
    parts = urlsplit(url)
    netloc = f"{parts.username}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def database_url(url: str) -> str:
    """Pin the PostgreSQL driver to psycopg2 (the pinned dependency) for a driverless URL.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg (v3), which this project does not install, so a
    plain URL fails with an ImportError in Optuna and MLflow alike. ``postgres://`` (the Heroku
    spelling) is not accepted by SQLAlchemy at all. An explicit ``+driver`` is left alone.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    if sep and scheme == "postgres":
        return f"postgresql://{rest}"
    return url
