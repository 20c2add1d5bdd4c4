"""Local paths and ``gs://`` URIs behind one small API, with atomic writes and bounded retries.

Local writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written file. ``gs://`` objects go through google-cloud-storage; an object upload only
becomes visible once complete, so it is atomic by nature. With STORAGE_EMULATOR_HOST set (a local
fake-gcs-server), the client talks to the emulator with anonymous credentials; otherwise it uses
Application Default Credentials (workload identity, or a mounted key named by
GOOGLE_APPLICATION_CREDENTIALS), never credentials from code or config.

Transient GCS errors (429, 5xx, dropped connections) are retried with exponential backoff until a
deadline (AUTOFT_GCS_RETRY_DEADLINE seconds, default 120); then a :class:`StorageError` names the URI.
Every function accepts a local path as well, so callers never branch on the scheme.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.storage import Blob, Bucket, Client

GCS_SCHEME = "gs://"
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
RETRY_DEADLINE_ENV = "AUTOFT_GCS_RETRY_DEADLINE"
REQUEST_TIMEOUT_ENV = "AUTOFT_GCS_TIMEOUT"
TRANSFER_WORKERS_ENV = "AUTOFT_GCS_WORKERS"
DEFAULT_RETRY_DEADLINE_S = 120.0
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_TRANSFER_WORKERS = 8
STAGE_MANIFEST = ".autoft-stage.json"

StrPath = str | os.PathLike[str]


class StorageError(RuntimeError):
    """A storage location is malformed or unreachable; the message names the URI."""


class StorageNotFound(StorageError, FileNotFoundError):
    """The object or path does not exist (also a FileNotFoundError, so local-style handlers work)."""


# --- URIs --------------------------------------------------------------------------------------


def is_gcs(uri: StrPath) -> bool:
    return str(uri).startswith(GCS_SCHEME)


def split_gcs_uri(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``; rejects URIs without a bucket."""
    if not is_gcs(uri):
        raise StorageError(f"not a gs:// URI: {uri!r}")
    bucket, _, blob = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise StorageError(f"gs:// URI without a bucket: {uri!r}; use gs://BUCKET/PATH")
    return bucket, blob


def join_uri(base: StrPath, *parts: str) -> str:
    """Join path parts onto a local path or a gs:// URI with the right separator."""
    if is_gcs(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def redact_url(url: str) -> str:
    """Hide a password in a URL (database or HTTP basic auth) before it reaches a message or a log."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def database_url(url: str) -> str:
    """Pin the PostgreSQL driver to psycopg2 (the pinned dependency) for a driverless URL.

    SQLAlchemy 2.1 maps ``postgresql://`` to psycopg (v3), which this project does not install, so a
    plain URL fails with an ImportError in Optuna and MLflow alike. ``postgres://`` (the Heroku
    spelling) is not accepted by SQLAlchemy at all. An explicit ``+driver`` is left alone.
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


# --- local atomic writes -----------------------------------------------------------------------


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the final file the usual umask-based mode so shared caches stay readable.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
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


def atomic_write_json(path: Path, payload: Any) -> Path:
    """Indented JSON, written atomically; numpy scalars and other number types become floats."""
    return atomic_write_text(Path(path), json.dumps(payload, indent=1, default=float))


def _atomic_copy(source: Path, dest: Path) -> Path:
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
    return dest


# --- GCS client, retries and error translation ------------------------------------------------

_clients: dict[str | None, Client] = {}
_clients_lock = threading.Lock()


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise StorageError(f"{name} must be > 0 seconds, got {raw!r}")
    return value


def retry_deadline() -> float:
    return _float_env(RETRY_DEADLINE_ENV, DEFAULT_RETRY_DEADLINE_S)


def request_timeout() -> float:
    return _float_env(REQUEST_TIMEOUT_ENV, DEFAULT_REQUEST_TIMEOUT_S)


def gcs_retry() -> Retry:
    """The client's own transient-error predicate, bounded by our deadline (read per call)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_delay(initial=0.5, maximum=10.0, multiplier=2.0).with_timeout(retry_deadline())


def emulator_endpoint() -> str | None:
    host = os.environ.get(EMULATOR_ENV, "").strip()
    if not host:
        return None
    # The variable is named HOST but google-cloud-storage expects a scheme; accept both spellings.
    return host if "://" in host else f"http://{host}"


def gcs_client() -> Client:
    """One client per endpoint (the emulator can change between tests); clients are thread-safe."""
    endpoint = emulator_endpoint()
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            client = _make_client(endpoint)
            _clients[endpoint] = client
        return client


def _make_client(endpoint: str | None) -> Client:
    from google.auth.credentials import AnonymousCredentials
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if endpoint:
        project = os.environ.get("GOOGLE_CLOUD_PROJECT") or "autoft-emulator"
        return storage.Client(
            project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )
    try:
        return storage.Client()
    except DefaultCredentialsError:
        raise StorageError(
            "no Google Cloud credentials for gs:// access: use workload identity, set "
            "GOOGLE_APPLICATION_CREDENTIALS to a mounted service-account key, or set "
            f"{EMULATOR_ENV} for a local emulator"
        ) from None


@contextmanager
def _gcs_errors(action: str, uri: str) -> Iterator[None]:
    """Turn client exceptions into StorageError naming the URI; retries already happened inside."""
    from google.api_core import exceptions as api_exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud.storage.exceptions import InvalidResponse
    from requests import RequestException

    try:
        yield
    except api_exceptions.NotFound:
        raise StorageNotFound(f"cannot {action} {uri}: no such object or bucket") from None
    except api_exceptions.Forbidden as error:
        raise StorageError(
            f"cannot {action} {uri}: permission denied ({error.message}); check the service account's roles"
        ) from None
    except api_exceptions.PreconditionFailed as error:
        raise StorageError(f"cannot {action} {uri}: the object changed during the transfer ({error.message})") from None
    except (
        api_exceptions.GoogleAPIError,
        auth_exceptions.GoogleAuthError,
        InvalidResponse,
        RequestException,
        ConnectionError,
        TimeoutError,
    ) as error:
        raise StorageError(
            f"cannot {action} {uri} (gave up after retrying transient errors for up to {retry_deadline():.0f}s, "
            f"see {RETRY_DEADLINE_ENV}): {type(error).__name__}: {error}"
        ) from error


def _bucket(uri: str) -> tuple[Bucket, str]:
    bucket_name, name = split_gcs_uri(uri)
    return gcs_client().bucket(bucket_name), name


def _blob(uri: str) -> Blob:
    bucket, name = _bucket(uri)
    if not name or name.endswith("/"):
        raise StorageError(f"{uri!r} names a folder, not an object; add the object name")
    return bucket.blob(name)


def _object_uri(bucket: str, name: str) -> str:
    return f"{GCS_SCHEME}{bucket}/{name}"


# --- single objects ----------------------------------------------------------------------------


def read_bytes(uri: StrPath) -> bytes:
    if not is_gcs(uri):
        path = Path(uri)
        if not path.is_file():
            raise StorageNotFound(f"no such file: {path}")
        return path.read_bytes()
    uri = str(uri)
    blob = _blob(uri)
    with _gcs_errors("read", uri):
        return blob.download_as_bytes(retry=gcs_retry(), timeout=request_timeout())


def write_bytes(uri: StrPath, data: bytes) -> str:
    """Write ``data`` at ``uri``; readers see the old content or the new one, never a mix."""
    if not is_gcs(uri):
        return str(atomic_write_bytes(Path(uri), data))
    uri = str(uri)
    blob = _blob(uri)
    with _gcs_errors("write", uri):
        # Retrying an unconditional overwrite is safe here: every attempt writes the same bytes.
        blob.upload_from_string(
            data, content_type="application/octet-stream", retry=gcs_retry(), timeout=request_timeout()
        )
    return uri


def read_text(uri: StrPath, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_text(uri: StrPath, text: str, encoding: str = "utf-8") -> str:
    return write_bytes(uri, text.encode(encoding))


def exists(uri: StrPath) -> bool:
    """True for an existing file or object, and for a folder or a non-empty gs:// prefix."""
    if not is_gcs(uri):
        return Path(uri).exists()
    uri = str(uri)
    bucket, name = _bucket(uri)
    with _gcs_errors("check", uri):
        if not name:
            return bool(bucket.exists(retry=gcs_retry(), timeout=request_timeout()))
        if not name.endswith("/") and bucket.blob(name).exists(retry=gcs_retry(), timeout=request_timeout()):
            return True
        prefix = name.rstrip("/") + "/"
        listing = bucket.list_blobs(prefix=prefix, max_results=1, retry=gcs_retry(), timeout=request_timeout())
        return any(True for _ in listing)


def upload_file(local: StrPath, uri: StrPath) -> str:
    local = Path(local)
    if not local.is_file():
        raise StorageNotFound(f"cannot upload {local}: no such file")
    if not is_gcs(uri):
        return str(_atomic_copy(local, Path(uri)))
    uri = str(uri)
    blob = _blob(uri)
    with _gcs_errors("upload to", uri):
        blob.upload_from_filename(str(local), retry=gcs_retry(), timeout=request_timeout())
    return uri


def download_file(uri: StrPath, local: StrPath) -> Path:
    """Copy an object (or a local file) to ``local``; the destination appears only when complete."""
    local = Path(local)
    if not is_gcs(uri):
        source = Path(uri)
        if not source.is_file():
            raise StorageNotFound(f"no such file: {source}")
        return _atomic_copy(source, local)
    uri = str(uri)
    blob = _blob(uri)
    with _gcs_errors("download", uri), atomic_path(local) as tmp:
        # checksum='auto' verifies crc32c/md5, so a corrupted transfer fails instead of caching garbage.
        blob.download_to_filename(str(tmp), retry=gcs_retry(), timeout=request_timeout(), checksum="auto")
    return local


# --- folders and prefixes ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteObject:
    """One object under a prefix: its path relative to the prefix and what identifies its content."""

    relative: str
    uri: str
    size: int
    generation: int | None


def _safe_relative(relative: str, prefix_uri: str) -> str:
    # An object name like "a/../../etc/x" must not write outside the staging folder.
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or ".." in parts:
        raise StorageError(f"refusing object {relative!r} under {prefix_uri}: it escapes the destination folder")
    return relative


def list_objects(uri_prefix: str) -> list[RemoteObject]:
    """Objects below a gs:// prefix (recursively), skipping zero-byte "folder" placeholders."""
    bucket, name = _bucket(uri_prefix)
    prefix = name.rstrip("/") + "/" if name else ""
    objects = []
    with _gcs_errors("list", uri_prefix):
        for blob in bucket.list_blobs(prefix=prefix, retry=gcs_retry(), timeout=request_timeout()):
            if blob.name.endswith("/"):
                continue
            relative = _safe_relative(blob.name[len(prefix) :], uri_prefix)
            objects.append(
                RemoteObject(relative, _object_uri(bucket.name, blob.name), int(blob.size or 0), blob.generation)
            )
    return sorted(objects, key=lambda o: o.relative)


def list_files(uri: StrPath) -> list[str]:
    """Relative paths of the files below a local folder or a gs:// prefix, sorted."""
    if is_gcs(uri):
        return [o.relative for o in list_objects(str(uri))]
    root = Path(uri)
    if not root.is_dir():
        raise StorageNotFound(f"no such folder: {root}")
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _transfer_workers() -> int:
    raw = os.environ.get(TRANSFER_WORKERS_ENV, "").strip()
    try:
        return max(1, int(raw)) if raw else DEFAULT_TRANSFER_WORKERS
    except ValueError:
        raise StorageError(f"{TRANSFER_WORKERS_ENV}={raw!r} is not an integer") from None


def upload_dir(local_dir: StrPath, uri_prefix: StrPath) -> list[str]:
    """Upload every file below ``local_dir`` to ``uri_prefix/<relative path>``; returns the URIs."""
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageNotFound(f"cannot upload {root}: no such folder")
    relatives = list_files(root)
    targets = [join_uri(uri_prefix, rel) for rel in relatives]
    # Object uploads are independent and network-bound, so threads overlap their latency.
    with ThreadPoolExecutor(max_workers=_transfer_workers()) as pool:
        list(pool.map(upload_file, [root / rel for rel in relatives], targets))
    return targets


def default_cache_dir() -> Path:
    """Downloads from gs:// live under the project's one cache root ($AUTOFT_CACHE, see autoft.paths)."""
    from autoft.paths import default_cache_dir as cache_root

    return cache_root() / "gcs"


def _uri_key(uri: str, *extra: Any) -> str:
    return hashlib.sha256("\n".join([uri, *map(str, extra)]).encode()).hexdigest()[:24]


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An advisory lock so parallel workers on one machine do not download the same data twice."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".autoft.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def download_to_cache(uri: StrPath, cache_dir: StrPath | None = None) -> Path:
    """A local copy of a gs:// object (a local path is returned as is).

    The cache key is the URI plus the object's generation and md5, so a re-uploaded object is fetched
    again while an unchanged one is never downloaded twice.
    """
    if not is_gcs(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise StorageNotFound(f"no such file: {path}")
        return path
    uri = str(uri)
    bucket, name = _bucket(uri)
    if not name or name.endswith("/"):
        raise StorageError(f"{uri!r} names a folder; download_to_cache needs an object (use stage_to_local)")
    with _gcs_errors("read metadata of", uri):
        blob = bucket.get_blob(name, retry=gcs_retry(), timeout=request_timeout())
    if blob is None:
        raise StorageNotFound(f"cannot download {uri}: no such object")
    folder = Path(cache_dir or default_cache_dir()) / "objects" / _uri_key(uri, blob.generation, blob.md5_hash)
    target = folder / PurePosixPath(name).name
    if target.is_file() and target.stat().st_size == (blob.size or 0):
        return target
    with _folder_lock(folder):
        if target.is_file() and target.stat().st_size == (blob.size or 0):
            return target  # another process finished it while we waited for the lock
        with _gcs_errors("download", uri), atomic_path(target) as tmp:
            # Pin the generation we keyed on: if the object is replaced meanwhile, fail rather than
            # store new bytes under the old key.
            blob.download_to_filename(
                str(tmp), if_generation_match=blob.generation, retry=gcs_retry(), timeout=request_timeout()
            )
        atomic_write_text(
            folder / "source.json",
            json.dumps({"uri": uri, "generation": blob.generation, "md5": blob.md5_hash, "size": blob.size}),
        )
    return target


def _read_manifest(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("objects"), dict):
            return data
    return {"objects": {}}


def stage_to_local(uri: StrPath, dest: StrPath | None = None, progress: bool = True) -> Path:
    """A local folder holding everything below a gs:// prefix (a local path is returned as is).

    Staging is incremental: a manifest of object generations in the folder lets a second call
    download only what changed and remove files whose objects are gone. A gs:// URI naming a single
    object stages that file and returns its path.
    """
    if not is_gcs(uri):
        return Path(uri)
    uri = str(uri).rstrip("/")
    _, name = split_gcs_uri(uri)
    folder = Path(dest) if dest is not None else default_cache_dir() / "staged" / _uri_key(uri)
    objects = list_objects(uri)
    if not objects:
        if name and exists(uri):
            return download_file(uri, folder / PurePosixPath(name).name)
        raise StorageNotFound(f"nothing to stage: no objects under {uri}")

    from tqdm.auto import tqdm

    with _folder_lock(folder):
        manifest_path = folder / STAGE_MANIFEST
        previous: dict[str, Any] = _read_manifest(manifest_path)["objects"]
        current = {o.relative: o.generation for o in objects}
        pending = [
            o
            for o in objects
            if previous.get(o.relative) != o.generation
            or not (folder / o.relative).is_file()
            or (folder / o.relative).stat().st_size != o.size
        ]
        for relative in set(previous) - set(current):
            # Only files this function staged before (listed in its manifest) are ever removed.
            with contextlib.suppress(FileNotFoundError):
                (folder / _safe_relative(relative, uri)).unlink()
        bar = tqdm(
            total=sum(o.size for o in pending), unit="B", unit_scale=True, desc=f"stage {uri}", disable=not progress
        )

        def fetch(obj: RemoteObject) -> None:
            download_file(obj.uri, folder / obj.relative)
            bar.update(obj.size)

        try:
            with ThreadPoolExecutor(max_workers=_transfer_workers()) as pool:
                list(pool.map(fetch, pending))
        finally:
            bar.close()
        if pending or previous != current:
            atomic_write_text(manifest_path, json.dumps({"uri": uri, "objects": current}, indent=1))
    return folder
