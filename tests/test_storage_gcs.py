"""autoft.storage and autoft.atomic against local folders and a real fake-gcs-server through the real client."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from autoft import atomic, storage
from autoft.errors import StorageError, StorageNotFound
from servers import FlakyProxy, free_port

if TYPE_CHECKING:
    from conftest_servers import GcsEmulator

pytest_plugins = ["conftest_servers"]


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "metadata.csv": b"split,filename,y\ntrain,a.png,0\ntest,b.png,1\n",
        "train/a.png": bytes(range(256)) * 10,
        "train/sub/c.bin": b"\x00" * 5000,
        "test/b.png": b"image-b",
    }
    for relative, data in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _data_files(tree: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in tree.items() if not k.startswith(".") and "/." not in k}


def test_atomic_writes_get_plain_file_modes_even_from_many_threads(tmp_path: Path) -> None:
    # The umask is read once at import: writing from 8 threads at once must never produce a file that
    # others may write to (the old code flipped the process umask to 0 around every write).
    expected = 0o666 & ~atomic.UMASK
    assert _current_umask() == atomic.UMASK

    def write(index: int) -> None:
        for round_ in range(25):
            atomic.atomic_write_text(tmp_path / f"f{index}-{round_}.txt", "x")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    modes = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {expected}, f"file modes {sorted(oct(m) for m in modes)}, expected {oct(expected)}"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary file left behind"
    assert _current_umask() == atomic.UMASK, "writing never changed the process umask"


def _current_umask() -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("Umask:"))
    return int(line.split()[1], 8)


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    atomic.atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_local_paths_are_used_in_place(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _make_tree(source)
    assert storage.stage_to_local(str(source)) == source
    assert storage.download_to_cache(str(source / "metadata.csv")) == source / "metadata.csv"
    with pytest.raises(StorageNotFound):
        storage.download_to_cache(str(tmp_path / "nope.safetensors"))


def test_upload_folder_and_stage_to_local_is_incremental(gcs: GcsEmulator, tmp_path: Path) -> None:
    bucket = gcs.new_bucket()
    files = _make_tree(tmp_path / "dataset")
    prefix = f"gs://{bucket}/data/iwildcam_v2.0"
    uploaded = storage.upload_folder(tmp_path / "dataset", prefix)
    assert sorted(uploaded) == sorted(f"{prefix}/{rel}" for rel in files)
    assert [o.relative for o in storage.list_objects(prefix)] == sorted(files)

    dest = tmp_path / "staged"
    assert storage.stage_to_local(prefix, dest, progress=False) == dest
    assert _data_files(_read_tree(dest)) == files
    assert {stat.S_IMODE((dest / rel).stat().st_mode) & 0o022 for rel in files} == {0}, "staged files not writable"

    # A second call downloads nothing: the files are the same inodes with the same mtimes.
    def stamps() -> dict[str, tuple[int, int]]:
        return {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns) for rel in files}

    before = stamps()
    storage.stage_to_local(prefix + "/", dest, progress=False)
    assert stamps() == before

    # A replaced object is fetched again; a deleted one disappears from the staged copy.
    client_bucket = storage.gcs_client().bucket(bucket)
    client_bucket.blob("data/iwildcam_v2.0/test/b.png").upload_from_string(b"image-b-v2")
    client_bucket.blob("data/iwildcam_v2.0/train/sub/c.bin").delete()
    storage.stage_to_local(prefix, dest, progress=False)
    staged = _data_files(_read_tree(dest))
    assert staged["test/b.png"] == b"image-b-v2"
    assert "train/sub/c.bin" not in staged
    assert staged["train/a.png"] == files["train/a.png"]

    # A single object stages as a file; an empty prefix is an error naming it.
    single = storage.stage_to_local(f"{prefix}/metadata.csv", tmp_path / "one", progress=False)
    assert single.read_bytes() == files["metadata.csv"]
    with pytest.raises(StorageNotFound, match="nothing to stage"):
        storage.stage_to_local(f"gs://{bucket}/data/absent", tmp_path / "absent", progress=False)


def test_download_to_cache_keys_on_generation(gcs: GcsEmulator, tmp_path: Path) -> None:
    bucket = gcs.new_bucket()
    weights = tmp_path / "model.safetensors"
    save_file({"visual.proj": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(weights))
    uri = f"gs://{bucket}/weights/tiny/model.safetensors"
    blob = storage.gcs_client().bucket(bucket).blob("weights/tiny/model.safetensors")
    blob.upload_from_filename(str(weights))

    cache = tmp_path / "cache"
    first = storage.download_to_cache(uri, cache)
    np.testing.assert_array_equal(load_file(str(first))["visual.proj"], np.arange(12, dtype=np.float32).reshape(3, 4))
    stamp = first.stat().st_mtime_ns
    again = storage.download_to_cache(uri, cache)
    assert again == first and again.stat().st_mtime_ns == stamp, "an unchanged object is served from the cache"

    save_file({"visual.proj": np.ones((3, 4), dtype=np.float32)}, str(weights))
    blob.upload_from_filename(str(weights))
    updated = storage.download_to_cache(uri, cache)
    assert updated != first, "a new generation gets a new cache entry"
    np.testing.assert_array_equal(load_file(str(updated))["visual.proj"], np.ones((3, 4), dtype=np.float32))

    with pytest.raises(StorageNotFound, match="no such object"):
        storage.download_to_cache(f"gs://{bucket}/weights/none.safetensors", cache)
    with pytest.raises(StorageError, match="names a folder"):
        storage.download_to_cache(f"gs://{bucket}/weights/", cache)


def test_transient_errors_are_retried(gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs.new_bucket()
    storage.gcs_client().bucket(bucket).blob("retry/a.txt").upload_from_string(b"survived")
    with FlakyProxy(gcs.url, failures=3) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        staged = storage.stage_to_local(f"gs://{bucket}/retry", tmp_path / "staged", progress=False)
        assert proxy.failed == 3, "the first three requests got a 503 and were retried"
        assert (staged / "a.txt").read_bytes() == b"survived"


def test_persistent_errors_end_in_a_clear_error(
    gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = gcs.new_bucket()
    monkeypatch.setenv("AUTOFT_GCS_RETRY_DEADLINE", "2")
    with FlakyProxy(gcs.url, failures=10_000) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        start = time.monotonic()
        with pytest.raises(StorageError, match=f"gs://{bucket}/x.*gave up after retrying") as caught:
            storage.stage_to_local(f"gs://{bucket}/x", tmp_path / "x", progress=False)
        assert time.monotonic() - start < 15
        assert proxy.failed > 1, "it retried before giving up"
        assert not isinstance(caught.value, StorageNotFound)

    # Nothing listening at all: connection refused is transient too, and bounded the same way.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot read metadata of gs://{bucket}/y.bin"):
        storage.download_to_cache(f"gs://{bucket}/y.bin", tmp_path / "cache")
    assert time.monotonic() - start < 15
    assert not list(tmp_path.rglob("y.bin")), "nothing half-downloaded under a final name"
