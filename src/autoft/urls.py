"""URLs and URIs as text: gs:// paths, database URLs for SQLAlchemy, and hiding passwords.

No I/O and no heavy imports, so config validation and the study steps can use them freely.
"""

from __future__ import annotations

import importlib.util
import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
            f"{where} {redact_text(storage)!r} looks like a mistyped database URL (no '://'); write e.g. "
            "postgresql://user@host/db, or give a local *.journal file"
        )
    if not storage.endswith(JOURNAL_SUFFIX):
        raise ConfigError(f"{where} {storage!r}: a local study storage is a journal file whose name ends in .journal")
    return storage


# Query-string keys that carry a credential: libpq's password/sslpassword, OAuth tokens, signed-URL
# signatures, API keys. A URL holding one is treated exactly like one with a password in its user-info.
SECRET_QUERY_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "pass",
        "sslpassword",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "auth_token",
        "secret",
        "client_secret",
        "key",
        "api_key",
        "apikey",
        "access_key",
        "secret_key",
        "sig",
        "signature",
        "x-goog-signature",
        "x-amz-signature",
        "x-amz-credential",
        "credential",
        "credentials",
    }
)
REDACTED = "***"


def _secret_query_values(url: str) -> list[str]:
    try:
        query = urlsplit(url).query
    except ValueError:
        return []
    return [value for key, value in parse_qsl(query, keep_blank_values=False) if key.lower() in SECRET_QUERY_KEYS]


def url_password(url: str) -> str | None:
    """The credential a URL carries, in its user-info (``user:PASSWORD@``) or its query (``?password=``,
    ``?token=``, ...), or None: the one test every "no secret in a parameter / artifact / log" check uses."""
    if "://" not in url:
        return None
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password:
        return password
    secrets = _secret_query_values(url)
    return secrets[0] if secrets else None


def redact_url(url: str) -> str:
    """Hide every credential in a URL (user-info password, secret query values) before it reaches a message,
    a log, an artifact or MLflow."""
    if not url_password(url):
        return url
    parts = urlsplit(url)
    try:
        has_password = bool(parts.password)
    except ValueError:
        has_password = False
    if has_password:
        netloc = f"{parts.username}:{REDACTED}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        query = [
            (key, REDACTED if key.lower() in SECRET_QUERY_KEYS else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


# ``user:password@host`` anywhere, with or without a scheme (a mistyped URL still carries its password).
_USERINFO = re.compile(r"(?<![\w.%+-])([\w.%+-]+):([^\s@/'\"]+)@")


def redact_text(text: str) -> str:
    """Every URL inside a free text (an exception's message, a log line) with its credentials hidden."""

    def one(match: re.Match[str]) -> str:
        found = match.group(0)
        url = found.rstrip(").,;:]'")  # punctuation of the sentence around it
        return redact_url(url) + found[len(url) :]

    text = _URL_IN_TEXT.sub(one, text)
    return _USERINFO.sub(lambda match: f"{match.group(1)}:{REDACTED}@", text)


# What MLflow's tracking client talks to: a server, a database, a local store (file: or a plain path).
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "file", "databricks", "databricks-uc")


def check_tracking_uri(uri: str, where: str) -> str:
    text = uri.strip()
    if not text:
        return uri
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", text)
    scheme = match.group(1).split("+")[0].lower() if match and len(match.group(1)) > 1 else ""
    if scheme and scheme not in TRACKING_SCHEMES:
        raise ConfigError(
            f"{where} {redact_url(text)!r}: {scheme}: is not an MLflow tracking store; allowed: "
            f"{', '.join(s + ':' for s in TRACKING_SCHEMES)} or a local path"
        )
    if scheme in ("http", "https") and not urlsplit(text).hostname:
        raise ConfigError(f"{where} {redact_url(text)!r}: no host; write e.g. http://mlflow:5000")
    return uri


# Locations: which schemes the code really reads from and writes to. Anything else with a scheme would
# otherwise become a local folder named after it (``./s3:/bucket/x``).
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")


def check_location(value: str, where: str, *, gcs: bool, what: str = "a local folder") -> str:
    """A path parameter: local, or gs://BUCKET/PATH where ``gcs`` (the code writes/reads GCS there).

    ``s3://``, ``http://``, ``gs://`` without a bucket, or gs:// where only local paths work, fail here with
    one line naming ``where``, instead of becoming a local folder called ``s3:``.
    """
    text = str(value).strip()
    where = f"{where} " if where else ""
    if is_gcs(text):
        if not gcs:
            raise ConfigError(
                f"{where}{text!r}: gs:// is not supported here; give {what} (copy it to or from GCS with "
                "`gcloud storage cp -r`)"
            )
        if not text[len(GCS_SCHEME) :].partition("/")[0]:
            raise ConfigError(f"{where}{text!r}: a gs:// location needs a bucket: gs://BUCKET/PATH")
        return text
    match = _SCHEME.match(text)
    if match and len(match.group(1)) > 1:  # C:\... (one letter) is a Windows drive, not a scheme
        allowed = f"{what} or gs://BUCKET/PATH" if gcs else what
        raise ConfigError(f"{where}{redact_url(text)!r}: {match.group(1)}: is not supported; give {allowed}")
    return text


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
