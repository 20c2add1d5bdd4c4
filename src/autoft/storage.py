"""``gs://`` data on local disk: staging a prefix, caching one object, uploading a folder.

Steps run in pods that share nothing but artifacts and buckets, so a step that decodes images stages
what it needs to its own disk first. Transfers go through google-cloud-storage's ``transfer_manager``
(parallel threads); staging is incremental (a manifest of object generations) and guarded by a file
lock, so parallel steps on one node download once. With ``STORAGE_EMULATOR_HOST`` set (a local
fake-gcs-server) the client uses anonymous credentials; otherwise Application Default Credentials
(Workload Identity, or a key file named by ``GOOGLE_APPLICATION_CREDENTIALS``), never code or config.

Transient errors are retried until a deadline (``AUTOFT_GCS_RETRY_DEADLINE`` seconds, default 120);
then a :class:`StorageError` names the URI. Every function accepts a local path as well and then
touches nothing, so callers never branch on the scheme.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from autoft.atomic import atomic_path, atomic_write_text
from autoft.errors import StorageError, StorageNotFound
from autoft.urls import is_gcs, split_gcs_uri

if TYPE_CHECKING:
    from google.api_core.retry import Retry
    from google.cloud.storage import Bucket, Client

log = logging.getLogger(__name__)

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
RETRY_DEADLINE_ENV = "AUTOFT_GCS_RETRY_DEADLINE"
TRANSFER_WORKERS_ENV = "AUTOFT_GCS_WORKERS"
DEFAULT_RETRY_DEADLINE_S = 120.0
REQUEST_TIMEOUT_S = 60.0
DEFAULT_TRANSFER_WORKERS = 8
STAGE_MANIFEST = ".autoft-stage.json"


def _positive_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise StorageError(f"{name} must be > 0, got {raw!r}")
    return value


def retry_deadline() -> float:
    return _positive_env(RETRY_DEADLINE_ENV, DEFAULT_RETRY_DEADLINE_S)


def _retry(deadline: float | None = None) -> Retry:
    """The client's own transient-error predicate, bounded by our deadline (read per call)."""
    from google.cloud.storage.retry import DEFAULT_RETRY

    bound = retry_deadline() if deadline is None else min(deadline, retry_deadline())
    return DEFAULT_RETRY.with_delay(initial=0.5, maximum=10.0, multiplier=2.0).with_timeout(bound)


# Listing and metadata calls come first and are cheap: an endpoint that does not answer them for this
# long is down, and the user hears so in seconds instead of waiting out the transfer deadline.
METADATA_DEADLINE_S = 15.0


_clients: dict[str | None, Client] = {}
_clients_lock = threading.Lock()


def emulator_endpoint() -> str | None:
    host = os.environ.get(EMULATOR_ENV, "").strip()
    if not host:
        return None
    # The variable is named HOST but google-cloud-storage expects a scheme; accept both spellings.
    return host if "://" in host else f"http://{host}"


def gcs_client() -> Client:
    """One thread-safe client per endpoint (the emulator may change between tests)."""
    endpoint = emulator_endpoint()
    with _clients_lock:
        if endpoint not in _clients:
            _clients[endpoint] = _make_client(endpoint)
        return _clients[endpoint]


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
            "no Google Cloud credentials for gs:// access: use Workload Identity, set GOOGLE_APPLICATION_CREDENTIALS "
            f"to a mounted service-account key, or set {EMULATOR_ENV} for a local emulator"
        ) from None


@contextmanager
def _gcs_errors(action: str, uri: str, deadline: float | None = None) -> Iterator[None]:
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
    except (
        api_exceptions.GoogleAPIError,
        auth_exceptions.GoogleAuthError,
        InvalidResponse,
        RequestException,
        ConnectionError,
        TimeoutError,
    ) as error:
        seconds = retry_deadline() if deadline is None else min(deadline, retry_deadline())
        raise StorageError(
            f"cannot {action} {uri} at {emulator_endpoint() or 'Google Cloud Storage'} (gave up after retrying for "
            f"up to {seconds:.0f}s, see {RETRY_DEADLINE_ENV}): {type(error).__name__}: {error}"
        ) from error


def _bucket(uri: str) -> tuple[Bucket, str]:
    bucket_name, name = split_gcs_uri(uri)
    return gcs_client().bucket(bucket_name), name


def _transfer_workers() -> int:
    return int(_positive_env(TRANSFER_WORKERS_ENV, DEFAULT_TRANSFER_WORKERS))


@dataclass(frozen=True)
class RemoteObject:
    """One object under a prefix: its path relative to the prefix and what identifies its content."""

    relative: str
    name: str
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
    log.info("listing %s at %s", uri_prefix, emulator_endpoint() or "Google Cloud Storage")
    with _gcs_errors("list", uri_prefix, METADATA_DEADLINE_S):
        for blob in bucket.list_blobs(prefix=prefix, retry=_retry(METADATA_DEADLINE_S), timeout=REQUEST_TIMEOUT_S):
            if blob.name.endswith("/"):
                continue
            relative = _safe_relative(blob.name[len(prefix) :], uri_prefix)
            objects.append(RemoteObject(relative, blob.name, int(blob.size or 0), blob.generation))
    return sorted(objects, key=lambda o: o.relative)


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


def download_to_cache(uri: str, cache_dir: str | Path | None = None) -> Path:
    """A local copy of one gs:// object (a local path is returned as is).

    The cache key is the URI plus the object's generation and md5, so a re-uploaded object is fetched
    again while an unchanged one is never downloaded twice.
    """
    if not is_gcs(uri):
        path = Path(uri).expanduser()
        if not path.exists():
            raise StorageNotFound(f"no such file: {path}")
        return path
    bucket, name = _bucket(uri)
    if not name or name.endswith("/"):
        raise StorageError(f"{uri!r} names a folder; give the URI of one object (or use stage_to_local)")
    with _gcs_errors("read metadata of", uri, METADATA_DEADLINE_S):
        blob = bucket.get_blob(name, retry=_retry(METADATA_DEADLINE_S), timeout=REQUEST_TIMEOUT_S)
    if blob is None:
        raise StorageNotFound(f"cannot download {uri}: no such object")
    folder = Path(cache_dir or default_cache_dir()) / "objects" / _uri_key(uri, blob.generation, blob.md5_hash)
    target = folder / PurePosixPath(name).name
    with _folder_lock(folder):
        if target.is_file() and target.stat().st_size == (blob.size or 0):
            return target  # cached, possibly by another process while we waited for the lock
        with _gcs_errors("download", uri), atomic_path(target) as tmp:
            # Pinned to the generation we keyed on: a replaced object fails rather than poisoning the key.
            blob.download_to_filename(
                str(tmp), if_generation_match=blob.generation, retry=_retry(), timeout=REQUEST_TIMEOUT_S
            )
    return target


def _read_stage_manifest(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and isinstance(data.get("objects"), dict):
            return data["objects"]
    return {}


def staging_folder(uri: str) -> Path:
    """This machine's (this pod's) copy of a gs:// prefix: the same folder for every call on one URI."""
    return default_cache_dir() / "staged" / _uri_key(str(uri).rstrip("/"))


def stage_files(uri_prefix: str, relatives: Sequence[str], progress: bool = True) -> Path:
    """Download just these objects below a gs:// prefix into its staging folder; returns the folder.

    What a step needs of a large dataset, not all of it: a file already there (staged by this function or
    by :func:`stage_to_local`) is not fetched again. Each file appears under its final name only when
    complete (a killed download leaves a temporary name that is never read), so a retried step reuses
    what the killed one finished. Objects are fetched in parallel threads, in batches the progress bar
    counts.
    """
    uri_prefix = str(uri_prefix).rstrip("/")
    folder = staging_folder(uri_prefix)
    wanted = sorted({_safe_relative(r, uri_prefix) for r in relatives})
    with _folder_lock(folder):
        missing = [r for r in wanted if not (folder / r).is_file()]
        if not missing:
            return folder
        from google.cloud.storage import transfer_manager
        from tqdm.auto import tqdm

        bucket, name = _bucket(uri_prefix)
        prefix = name.rstrip("/") + "/" if name else ""
        suffix = f".part-{os.getpid()}"
        with tqdm(total=len(missing), unit="file", desc=f"stage {uri_prefix}", disable=not progress) as bar:
            batch = max(_transfer_workers() * 4, 1)
            for start in range(0, len(missing), batch):
                chunk = missing[start : start + batch]
                for relative in chunk:
                    (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                parts = [str(folder / r) + suffix for r in chunk]
                try:
                    with _gcs_errors("download files of", uri_prefix):
                        transfer_manager.download_many(
                            [(bucket.blob(prefix + r), part) for r, part in zip(chunk, parts, strict=True)],
                            download_kwargs={"retry": _retry(), "timeout": REQUEST_TIMEOUT_S},
                            max_workers=_transfer_workers(),
                            worker_type=transfer_manager.THREAD,
                            raise_exception=True,
                        )
                except BaseException:
                    for part in parts:
                        Path(part).unlink(missing_ok=True)
                    raise
                for relative in chunk:
                    os.replace(str(folder / relative) + suffix, folder / relative)
                bar.update(len(chunk))
    return folder


def stage_to_local(uri: str | Path, dest: str | Path | None = None, progress: bool = True) -> Path:
    """A local folder holding everything below a gs:// prefix (a local path is returned as is).

    Incremental: a manifest of object generations lets a second call download only what changed and
    remove files whose objects are gone. A URI naming a single object stages that file and returns its path.
    """
    if not is_gcs(uri):
        return Path(uri)
    uri = str(uri).rstrip("/")
    folder = Path(dest) if dest is not None else staging_folder(uri)
    objects = list_objects(uri)
    if not objects:
        bucket, name = _bucket(uri)
        with _gcs_errors("read metadata of", uri, METADATA_DEADLINE_S):
            single = (
                bucket.get_blob(name, retry=_retry(METADATA_DEADLINE_S), timeout=REQUEST_TIMEOUT_S) if name else None
            )
        if single is None:
            raise StorageNotFound(f"nothing to stage: no objects under {uri}; check the bucket and the path")
        return download_to_cache(uri, folder)
    from google.cloud.storage import transfer_manager
    from tqdm.auto import tqdm

    with _folder_lock(folder):
        manifest_path = folder / STAGE_MANIFEST
        previous = _read_stage_manifest(manifest_path)
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
            (folder / _safe_relative(relative, uri)).unlink(missing_ok=True)
        if pending:
            bucket, _ = _bucket(uri)
            with tqdm(total=len(pending), unit="file", desc=f"stage {uri}", disable=not progress) as bar:
                # Batches, so the bar moves; each batch runs in parallel threads.
                batch = max(_transfer_workers() * 4, 1)
                for start in range(0, len(pending), batch):
                    chunk = pending[start : start + batch]
                    for o in chunk:
                        (folder / o.relative).parent.mkdir(parents=True, exist_ok=True)
                    with _gcs_errors("download", uri):
                        transfer_manager.download_many(
                            [(bucket.blob(o.name, generation=o.generation), str(folder / o.relative)) for o in chunk],
                            download_kwargs={"retry": _retry(), "timeout": REQUEST_TIMEOUT_S},
                            max_workers=_transfer_workers(),
                            worker_type=transfer_manager.THREAD,
                            raise_exception=True,
                        )
                    bar.update(len(chunk))
        if pending or previous != current:
            # Written last: a run cut short leaves the old manifest, so its files are fetched again.
            atomic_write_text(manifest_path, json.dumps({"uri": uri, "objects": current}, indent=1))
    return folder


def upload_folder(local_dir: str | Path, uri_prefix: str, relatives: Sequence[str] | None = None) -> list[str]:
    """Upload every file below ``local_dir`` (or just ``relatives``) to ``uri_prefix/<relative path>`` in
    parallel; returns the URIs."""
    from google.cloud.storage import transfer_manager

    root = Path(local_dir)
    if not root.is_dir():
        raise StorageNotFound(f"cannot upload {root}: no such folder")
    if relatives is None:
        relatives = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    relatives = [_safe_relative(relative, str(root)) for relative in relatives]
    bucket, name = _bucket(uri_prefix)
    prefix = name.rstrip("/") + "/" if name else ""
    with _gcs_errors("upload to", uri_prefix):
        transfer_manager.upload_many_from_filenames(
            bucket,
            relatives,
            source_directory=str(root),
            blob_name_prefix=prefix,
            upload_kwargs={"retry": _retry(), "timeout": REQUEST_TIMEOUT_S},
            max_workers=_transfer_workers(),
            worker_type=transfer_manager.THREAD,
            raise_exception=True,
        )
    return [f"gs://{bucket.name}/{prefix}{relative}" for relative in relatives]


def read_text(uri: str) -> str | None:
    """The text of one small gs:// object, or None when there is no such object."""
    bucket, name = _bucket(uri)
    with _gcs_errors("read", uri, METADATA_DEADLINE_S):
        blob = bucket.get_blob(name, retry=_retry(METADATA_DEADLINE_S), timeout=REQUEST_TIMEOUT_S)
        if blob is None:
            return None
        return blob.download_as_text(retry=_retry(), timeout=REQUEST_TIMEOUT_S)


def write_text(uri: str, text: str) -> None:
    """Write one small gs:// object; readers see the old or the new content, never a mix."""
    bucket, name = _bucket(uri)
    with _gcs_errors("write", uri):
        bucket.blob(name).upload_from_string(text, retry=_retry(), timeout=REQUEST_TIMEOUT_S)


def delete_prefix(uri_prefix: str) -> int:
    """Delete every object below a gs:// prefix; returns how many."""
    objects = list_objects(uri_prefix)
    bucket, _ = _bucket(uri_prefix)
    with _gcs_errors("delete below", uri_prefix):
        for remote in objects:
            bucket.blob(remote.name).delete(retry=_retry(), timeout=REQUEST_TIMEOUT_S)
    return len(objects)
