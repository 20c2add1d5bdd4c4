"""Fine-tuning checkpoints that outlive the pod: a retried or preempted step resumes from the last epoch.

The training loop writes its per-epoch checkpoint to a scratch folder (fast local disk). After each
epoch this module copies that checkpoint to a durable root keyed by the pipeline run and the method,
``<root>/<run>/<method>/epoch-<k>/``, then points ``LATEST.json`` at it; older epochs are deleted after
the pointer moves, so a kill at any moment leaves one complete checkpoint that the pointer names. On
start, :meth:`DurableCheckpoints.restore` copies the checkpoint ``LATEST.json`` names back into the
scratch folder, and the loop resumes from it (it refuses one written by another run: the fingerprint).

The root is a ``gs://`` prefix on a cluster (``AUTOFT_CHECKPOINT_ROOT`` or the pipeline's
``checkpoint_root``) or a local folder (kfp.local: the run folder). One writer per (run, method): KFP
runs one attempt of a task at a time.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from autoft.atomic import atomic_path, atomic_write_text
from autoft.errors import CheckpointError
from autoft.urls import is_gcs

log = logging.getLogger(__name__)

CHECKPOINT_ROOT_ENV = "AUTOFT_CHECKPOINT_ROOT"
MARKER = "LATEST.json"
# What the fine-tuning loop needs to continue (autoft.train): the last epoch's weights and train state,
# the best epoch's weights, and the per-epoch history.
CHECKPOINT_FILES = ("checkpoint/model.safetensors", "checkpoint/train_state.pt", "best.safetensors", "history.json")


def _safe_key(value: str) -> str:
    """A run id or method name as one path segment (KFP run ids are UUIDs; local ids may not be)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "-", value).strip(".-")
    if not key:
        raise CheckpointError(f"cannot key durable checkpoints by {value!r}")
    return key


class DurableCheckpoints:
    """Epoch checkpoints of one fine-tuning run (one method of one pipeline run) under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")

    @classmethod
    def for_run(cls, base: str | Path, run_id: str, method: str) -> DurableCheckpoints:
        return cls(f"{str(base).rstrip('/')}/{_safe_key(run_id)}/{_safe_key(method)}")

    @property
    def remote(self) -> bool:
        return is_gcs(self.root)

    def _read_marker(self) -> dict[str, Any] | None:
        if self.remote:
            from autoft.storage import read_text

            text = read_text(f"{self.root}/{MARKER}")
        else:
            path = Path(self.root) / MARKER
            text = path.read_text() if path.is_file() else None
        if text is None:
            return None
        try:
            marker = json.loads(text)
            int(marker["epoch"]), str(marker["folder"])
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(f"{self.root}/{MARKER} is not a checkpoint pointer ({error}); delete it") from None
        return marker

    def latest_epoch(self) -> int | None:
        """The last epoch saved here (0-based), or None when nothing was saved yet."""
        marker = self._read_marker()
        return None if marker is None else int(marker["epoch"])

    def restore(self, scratch: Path) -> int | None:
        """Copy the latest checkpoint into ``scratch`` (the loop's folder); returns its epoch, or None."""
        marker = self._read_marker()
        if marker is None:
            return None
        source = f"{self.root}/{marker['folder']}"
        scratch = Path(scratch)
        if self.remote:
            from autoft.errors import StorageNotFound
            from autoft.storage import stage_to_local

            try:
                copy_from = Path(stage_to_local(source, progress=False))
            except StorageNotFound:
                raise CheckpointError(
                    f"{self.root}/{MARKER} names {source}, which holds nothing; delete {self.root} to start over"
                ) from None
        else:
            copy_from = Path(source)
        missing = [name for name in CHECKPOINT_FILES if not (copy_from / name).is_file()]
        if missing:
            raise CheckpointError(f"durable checkpoint {source} lacks {missing}; delete {self.root} to start over")
        for name in CHECKPOINT_FILES:
            with atomic_path(scratch / name) as tmp:
                shutil.copyfile(copy_from / name, tmp)
        return int(marker["epoch"])

    def save(self, scratch: Path, epoch: int) -> str:
        """Copy epoch ``epoch``'s checkpoint from ``scratch``; returns the folder it went to."""
        scratch = Path(scratch)
        missing = [name for name in CHECKPOINT_FILES if not (scratch / name).is_file()]
        if missing:
            raise CheckpointError(f"no complete checkpoint in {scratch} after epoch {epoch} (missing {missing})")
        previous = self._read_marker()
        folder = f"epoch-{epoch:04d}"
        target = f"{self.root}/{folder}"
        marker = json.dumps({"epoch": epoch, "folder": folder, "files": list(CHECKPOINT_FILES)}, indent=1)
        if self.remote:
            from autoft.storage import delete_prefix, upload_folder, write_text

            upload_folder(scratch, target, CHECKPOINT_FILES)
            write_text(f"{self.root}/{MARKER}", marker)  # the commit point: the pointer moves last
            if previous and previous["folder"] != folder:
                delete_prefix(f"{self.root}/{previous['folder']}")
        else:
            for name in CHECKPOINT_FILES:
                with atomic_path(Path(target) / name) as tmp:
                    shutil.copyfile(scratch / name, tmp)
            atomic_write_text(Path(self.root) / MARKER, marker)
            if previous and previous["folder"] != folder:
                shutil.rmtree(Path(self.root) / previous["folder"], ignore_errors=True)
        return target
