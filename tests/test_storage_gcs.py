"""autoft.storage against local folders and a real fake-gcs-server through the real GCS client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from autoft import storage
from autoft.storage import StorageError, StorageNotFound
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


def test_local_paths_use_the_same_api(tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.json"
    assert storage.write_text(target, '{"a": 1}') == str(target)
    assert storage.read_text(target) == '{"a": 1}'
    assert storage.exists(target) and storage.exists(tmp_path / "out")
    assert not storage.exists(tmp_path / "missing")
    assert [p.name for p in target.parent.iterdir()] == ["results.json"], "no temporary file left behind"
    with pytest.raises(StorageNotFound, match="missing"):
        storage.read_bytes(tmp_path / "missing")

    source = tmp_path / "src"
    files = _make_tree(source)
    storage.upload_dir(source, tmp_path / "copy")
    assert _read_tree(tmp_path / "copy") == files
    assert storage.list_files(tmp_path / "copy") == sorted(files)
    assert storage.download_file(tmp_path / "copy" / "test/b.png", tmp_path / "b.png").read_bytes() == b"image-b"
    # Local data roots and weights are used in place, never copied into a cache.
    assert storage.stage_to_local(str(source)) == source
    assert storage.download_to_cache(str(source / "metadata.csv")) == source / "metadata.csv"
    with pytest.raises(StorageNotFound):
        storage.download_to_cache(str(tmp_path / "nope.safetensors"))


def test_gcs_objects_round_trip(gcs: GcsEmulator, tmp_path: Path) -> None:
    bucket = gcs.new_bucket()
    uri = f"gs://{bucket}/runs/r1/results.json"
    assert not storage.exists(uri)
    storage.write_text(uri, json.dumps({"accuracy": 0.5}))
    assert json.loads(storage.read_text(uri)) == {"accuracy": 0.5}
    assert storage.exists(uri)
    assert storage.exists(f"gs://{bucket}/runs/r1"), "a prefix with objects exists like a folder"
    assert storage.exists(f"gs://{bucket}")
    assert not storage.exists(f"gs://{bucket}/runs/r2")

    storage.write_bytes(uri, b"second version")
    assert storage.read_bytes(uri) == b"second version"

    local = tmp_path / "weights.bin"
    local.write_bytes(b"w" * 70_000)
    storage.upload_file(local, f"gs://{bucket}/models/weights.bin")
    downloaded = storage.download_file(f"gs://{bucket}/models/weights.bin", tmp_path / "dl" / "weights.bin")
    assert downloaded.read_bytes() == local.read_bytes()

    with pytest.raises(StorageNotFound, match=f"gs://{bucket}/runs/none.json"):
        storage.read_bytes(f"gs://{bucket}/runs/none.json")
    with pytest.raises(StorageError, match="names a folder"):
        storage.write_bytes(f"gs://{bucket}/runs/", b"x")


def test_stage_to_local_is_incremental(gcs: GcsEmulator, tmp_path: Path) -> None:
    bucket = gcs.new_bucket()
    files = _make_tree(tmp_path / "dataset")
    prefix = f"gs://{bucket}/data/iwildcam_v2.0"
    uploaded = storage.upload_dir(tmp_path / "dataset", prefix)
    assert sorted(uploaded) == sorted(f"{prefix}/{rel}" for rel in files)
    assert storage.list_files(prefix) == sorted(files)

    dest = tmp_path / "staged"
    assert storage.stage_to_local(prefix, dest, progress=False) == dest
    assert _data_files(_read_tree(dest)) == files

    # A second call downloads nothing: the files are the same inodes with the same mtimes.
    def stamps() -> dict[str, tuple[int, int]]:
        return {rel: ((dest / rel).stat().st_ino, (dest / rel).stat().st_mtime_ns) for rel in files}

    before = stamps()
    storage.stage_to_local(prefix + "/", dest, progress=False)
    assert stamps() == before

    # A replaced object is fetched again; a deleted one disappears from the staged copy.
    storage.write_bytes(f"{prefix}/test/b.png", b"image-b-v2")
    storage.gcs_client().bucket(bucket).blob("data/iwildcam_v2.0/train/sub/c.bin").delete()
    storage.stage_to_local(prefix, dest, progress=False)
    staged = _data_files(_read_tree(dest))
    assert staged["test/b.png"] == b"image-b-v2"
    assert "train/sub/c.bin" not in staged
    assert staged["train/a.png"] == files["train/a.png"]

    # Default destination: the cache, keyed by URI; a single object stages as a file.
    single = storage.stage_to_local(f"{prefix}/metadata.csv", tmp_path / "one", progress=False)
    assert single.read_bytes() == files["metadata.csv"]
    with pytest.raises(StorageNotFound, match="nothing to stage"):
        storage.stage_to_local(f"gs://{bucket}/data/absent", tmp_path / "absent", progress=False)


def test_download_to_cache_keys_on_generation(gcs: GcsEmulator, tmp_path: Path) -> None:
    bucket = gcs.new_bucket()
    weights = tmp_path / "model.safetensors"
    save_file({"visual.proj": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(weights))
    uri = f"gs://{bucket}/weights/tiny/model.safetensors"
    storage.upload_file(weights, uri)

    cache = tmp_path / "cache"
    first = storage.download_to_cache(uri, cache)
    np.testing.assert_array_equal(load_file(str(first))["visual.proj"], np.arange(12, dtype=np.float32).reshape(3, 4))
    stamp = first.stat().st_mtime_ns
    again = storage.download_to_cache(uri, cache)
    assert again == first and again.stat().st_mtime_ns == stamp, "an unchanged object is served from the cache"

    save_file({"visual.proj": np.ones((3, 4), dtype=np.float32)}, str(weights))
    storage.upload_file(weights, uri)
    updated = storage.download_to_cache(uri, cache)
    assert updated != first, "a new generation gets a new cache entry"
    np.testing.assert_array_equal(load_file(str(updated))["visual.proj"], np.ones((3, 4), dtype=np.float32))
    assert json.loads((updated.parent / "source.json").read_text())["uri"] == uri

    with pytest.raises(StorageNotFound, match="no such object"):
        storage.download_to_cache(f"gs://{bucket}/weights/none.safetensors", cache)


def test_transient_errors_are_retried(gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs.new_bucket()
    with FlakyProxy(gcs.url, failures=3) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        storage.write_bytes(f"gs://{bucket}/retry/a.txt", b"survived")
        assert proxy.failed == 3, "the first three requests got a 503 and were retried"
        assert storage.read_bytes(f"gs://{bucket}/retry/a.txt") == b"survived"
        assert proxy.seen >= 5


def test_persistent_errors_end_in_a_clear_error(gcs: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = gcs.new_bucket()
    monkeypatch.setenv("AUTOFT_GCS_RETRY_DEADLINE", "2")
    with FlakyProxy(gcs.url, failures=10_000) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        start = time.monotonic()
        with pytest.raises(StorageError, match=f"gs://{bucket}/x.txt.*gave up after retrying") as caught:
            storage.read_bytes(f"gs://{bucket}/x.txt")
        assert time.monotonic() - start < 15
        assert proxy.failed > 1, "it retried before giving up"
        assert not isinstance(caught.value, StorageNotFound)

    # Nothing listening at all: connection refused is transient too, and bounded the same way.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot write gs://{bucket}/y.txt"):
        storage.write_bytes(f"gs://{bucket}/y.txt", b"y")
    assert time.monotonic() - start < 15
