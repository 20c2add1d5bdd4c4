"""DataLoaders tuned for the device, and the persistent seeded batch stream of the inner loop."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    drop_last: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffle order depends only on ``seed`` (reproducible, resumable)."""
    generator = torch.Generator().manual_seed(seed)
    on_gpu = torch.device(device).type == "cuda"
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        num_workers=num_workers,
        pin_memory=on_gpu,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


class BatchStream:
    """An endless stream of shuffled batches from one seeded generator.

    The inner loop of the search draws from ONE stream across trials (as AutoFT does), so each trial
    sees fresh batches while the whole sequence stays a function of the seed.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0, device: str = "cpu"):
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError("cannot stream batches from an empty training split")
        self.generator = torch.Generator().manual_seed(seed)
        sampler = RandomSampler(dataset, generator=self.generator)
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=len(dataset) >= batch_size,  # type: ignore[arg-type]
            num_workers=num_workers,
            pin_memory=torch.device(device).type == "cuda",
            persistent_workers=num_workers > 0,
        )
        self._iterator: Iterator | None = None

    def next(self):
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)
