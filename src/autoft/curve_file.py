"""Training curves through a file: how the ranks of a multi-process fine-tuning step reach an observer.

An observer (``autoft.observers.TrainingObserver``, e.g. the pipeline's MLflow curves) lives in the
process that launched torchrun and cannot be handed to the ranks. Rank 0 appends each call to a
JSON-lines file instead (:class:`CurveFile`); when the ranks are done, the launcher replays what this
launch appended (:func:`replay_curves`), so the observer sees the same calls as in a one-process run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from autoft.observers import TrainingObserver

CURVES_FILE = "curves.jsonl"  # in the fine-tuning step's train/ folder


class CurveFile:
    """A :class:`TrainingObserver` that appends every call to ``path`` (one JSON object a line)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        self._append("step", step, values)

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        self._append("epoch", epoch, values)

    def _append(self, kind: str, index: int, values: Mapping[str, float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"kind": kind, "index": index, "values": dict(values)}) + "\n")


def curve_file_size(path: Path) -> int:
    """Where a launch starts appending (what an earlier, killed launch wrote is not replayed again)."""
    return Path(path).stat().st_size if Path(path).is_file() else 0


def replay_curves(path: Path, observer: TrainingObserver, start: int = 0) -> None:
    """Send ``observer`` every call recorded in ``path`` after byte ``start``, in order."""
    if not Path(path).is_file():
        return
    with open(path) as handle:
        handle.seek(start)
        for line in handle:
            record = json.loads(line)
            call = observer.on_step if record["kind"] == "step" else observer.on_epoch
            call(int(record["index"]), record["values"])
