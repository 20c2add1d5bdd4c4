"""Durable fine-tuning checkpoints: saved per epoch under run and method, restored into a fresh scratch
folder (a new pod), the pointer moved last, old epochs removed, bad pointers refused."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from autoft.durable import CHECKPOINT_FILES, MARKER, DurableCheckpoints
from autoft.errors import CheckpointError
from autoft.storage import list_objects, write_text

if TYPE_CHECKING:
    from conftest_servers import GcsEmulator

pytest_plugins = ["conftest_servers"]


def write_checkpoint(scratch: Path, epoch: int) -> dict[str, bytes]:
    contents = {name: f"{name} after epoch {epoch}".encode() for name in CHECKPOINT_FILES}
    for name, data in contents.items():
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).write_bytes(data)
    return contents


def round_trip(durable: DurableCheckpoints, tmp_path: Path) -> None:
    assert durable.latest_epoch() is None
    assert durable.restore(tmp_path / "empty") is None  # a first attempt starts from epoch 0
    pod_a = tmp_path / "pod-a"
    write_checkpoint(pod_a, 0)
    durable.save(pod_a, 0)
    expected = write_checkpoint(pod_a, 1)
    durable.save(pod_a, 1)
    assert durable.latest_epoch() == 1

    pod_b = tmp_path / "pod-b"  # the retried attempt, on another node
    assert durable.restore(pod_b) == 1
    assert {name: (pod_b / name).read_bytes() for name in CHECKPOINT_FILES} == expected


def test_a_local_root_keeps_one_epoch_and_restores_it(tmp_path: Path) -> None:
    durable = DurableCheckpoints.for_run(tmp_path / "durable", "run 1/a", "autoft")
    assert durable.root.endswith("/run-1-a/autoft")
    round_trip(durable, tmp_path)
    folders = sorted(p.name for p in Path(durable.root).iterdir())
    assert folders == [MARKER, "epoch-0001"]  # epoch 0 removed once the pointer moved past it


def test_a_gcs_root_survives_the_pod(gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path / "cache"))
    base = f"gs://{gcs.new_bucket()}/checkpoints"
    durable = DurableCheckpoints.for_run(base, "9f0c-run", "ft")
    round_trip(durable, tmp_path)
    names = sorted(o.relative for o in list_objects(durable.root))
    assert names == [MARKER, *sorted(f"epoch-0001/{name}" for name in CHECKPOINT_FILES)]


def test_bad_pointers_and_incomplete_checkpoints_are_refused(
    gcs: GcsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOFT_CACHE", str(tmp_path / "cache"))
    durable = DurableCheckpoints(f"gs://{gcs.new_bucket()}/ck")
    write_text(f"{durable.root}/{MARKER}", "{not json")
    with pytest.raises(CheckpointError, match="not a checkpoint pointer"):
        durable.restore(tmp_path / "scratch")
    write_text(f"{durable.root}/{MARKER}", '{"epoch": 2, "folder": "epoch-0002"}')
    with pytest.raises(CheckpointError):  # the pointer names a folder with nothing in it
        durable.restore(tmp_path / "scratch")
    (tmp_path / "partial").mkdir()
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        durable.save(tmp_path / "partial", 0)
