"""What the engine tells an observer while it trains: the one interface tracking plugs into.

The library never talks to MLflow; the pipeline steps pass an observer (components/tracking.py) that
turns these calls into MLflow metrics, so the engine stays usable (and testable) without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol


class TrainingObserver(Protocol):
    def on_step(self, step: int, values: Mapping[str, float]) -> None:
        """After each optimizer step: the loss, each loss term and the learning rate."""

    def on_epoch(self, epoch: int, values: Mapping[str, float]) -> None:
        """After each epoch: its mean training loss and terms, the ID-val metric, the learning rate."""
