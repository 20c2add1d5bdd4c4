"""Where batches come from: a split decoded once into memory, or decoded per pass by DataLoader workers.

Why: per-sample host transforms cost more than a training step of a small model (0.4 ms an image
against ~20 ms a step of 64; docs/performance.md). A split whose base images (``autoft.data.transforms``)
fit ``data.memory_budget_mb`` is decoded ONCE into a uint8 tensor (on the GPU when the run is there) and
a batch is an index into it; a larger split is decoded per pass by DataLoader workers with pinned memory
and persistent workers. Either way the device finishes each batch (crop, normalisation), so results
do not depend on the path a split takes.

Order: a batch plan is a function of a seed. One ``torch.Generator`` draws the permutation, then each
batch's crop boxes in turn, so a resumed epoch and every rank of a multi-process run see the same
global batches; a rank takes its contiguous share of each.
"""

from __future__ import annotations

import atexit
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from autoft.data.images import LabeledImages, array_rows
from autoft.data.transforms import ImageTransform
from autoft.distributed import available_cpus

DEFAULT_MEMORY_BUDGET_MB = 4096
MAX_AUTO_WORKERS = 8
DECODE_BATCH = 256


def resolve_workers(setting: int | str, processes: int = 1) -> int:
    """``auto``: one core per process stays with the training loop, the rest decode (at most 8 each)."""
    if setting != "auto":
        return int(setting)
    return max(0, min(MAX_AUTO_WORKERS, available_cpus() // max(processes, 1) - 1))


@dataclass(frozen=True)
class InputSettings:
    """How a split is batched: the device batches are for, the in-memory budget, decode workers."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB
    num_workers: int = 0


class Batch(NamedTuple):
    images: torch.Tensor  # float [B, 3, S, S], normalised, on the device
    labels: torch.Tensor  # int64 [B], on the host (captions are drawn from them)
    groups: torch.Tensor  # int64 [B], on the host


class _Bases(Dataset):
    """Base images one at a time: what DataLoader workers decode."""

    def __init__(self, images: LabeledImages, transform: ImageTransform, native: bool) -> None:
        self.images, self.transform, self.native = images, transform, native

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.transform.base(self.images.image(index), native=self.native)


class _Plan:
    """A batch sampler whose batches are set before each pass (one DataLoader, persistent workers)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ImageBatches:
    """A split ready to batch with one transform: labels, groups and base images fetched by index."""

    def __init__(self, images: LabeledImages, transform: ImageTransform, settings: InputSettings | None = None) -> None:
        settings = settings or InputSettings()
        self.transform = transform
        self.class_names = list(images.class_names)
        self.device = torch.device(settings.device)
        native = images.native_shape()
        self.native = native is not None and transform.keeps_native(*native)
        self.base_shape = native if native is not None and self.native else (transform.size, transform.size)
        self.labels = torch.from_numpy(np.array(images.labels, dtype=np.int64))  # a copy: sources may be read-only
        self.groups = torch.from_numpy(np.array(images.groups, dtype=np.int64))
        self.nbytes = len(images) * 3 * self.base_shape[0] * self.base_shape[1]
        self.in_memory = self.nbytes <= settings.memory_budget_mb * 2**20
        dataset = _Bases(images, transform, self.native)
        self._plan = _Plan()
        self._cache: torch.Tensor | None = None
        self._loader: DataLoader | None = None
        if self.in_memory:
            self._cache = _decode_all(images, dataset, settings.num_workers).to(self.device)
        else:
            self._loader = DataLoader(
                dataset,
                batch_sampler=self._plan,
                num_workers=settings.num_workers,
                pin_memory=self.device.type == "cuda",
                persistent_workers=settings.num_workers > 0,
            )

    def __len__(self) -> int:
        return len(self.labels)

    def fetch(self, index_batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """uint8 base images on the device for each index batch, in order."""
        if self._cache is not None:
            for indices in index_batches:  # index_select: ~10x faster than advanced indexing on uint8
                yield self._cache.index_select(0, indices.to(self._cache.device))
            return
        assert self._loader is not None
        self._plan.batches = [indices.tolist() for indices in index_batches]
        for bases in self._loader:
            yield bases.to(self.device, non_blocking=True)


def _decode_all(images: LabeledImages, dataset: _Bases, num_workers: int) -> torch.Tensor:
    """Every base image of a split as one uint8 [N, 3, h, w] tensor (array splits without a copy per image)."""
    rows = array_rows(images) if dataset.native else None
    if rows is not None:
        return torch.from_numpy(rows).permute(0, 3, 1, 2).contiguous()
    return torch.cat(list(DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=num_workers)))


def _split(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


def share(count: int, rank: int, world_size: int) -> slice:
    """A rank's contiguous share of a global batch of ``count`` examples."""
    if count % world_size:
        raise ValueError(f"a batch of {count} does not split evenly over {world_size} processes")
    size = count // world_size
    return slice(rank * size, (rank + 1) * size)


def _finished(
    source: ImageBatches, global_batches: list[torch.Tensor], generator: torch.Generator, rank: int, world_size: int
) -> Iterator[Batch]:
    shares = [share(len(chunk), rank, world_size) for chunk in global_batches]
    local = [chunk[part] for chunk, part in zip(global_batches, shares, strict=True)]
    # Crop boxes for the whole pass in one draw (per-batch draws cost more in op overhead than in maths).
    crops = source.transform.draw_crops(sum(len(chunk) for chunk in global_batches), *source.base_shape, generator)
    offset = 0
    for chunk, part, indices, bases in zip(global_batches, shares, local, source.fetch(local), strict=True):
        mine = None if crops is None else crops[offset : offset + len(chunk)][part]
        offset += len(chunk)
        yield Batch(source.transform.finish(bases, mine), source.labels[indices], source.groups[indices])


class _Done:
    """The producer's last item: the end of the batches, or the error that ended them."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class _Producer:
    """The background thread behind :func:`prefetched`: stopped by its consumer, or at interpreter exit.

    No torch work may outlive its consumer: a thread still inside a torch op while the interpreter shuts
    down aborts the process ("terminate called without an active exception").
    """

    live: ClassVar[set[_Producer]] = set()

    def __init__(self, batches: Iterable[Batch], ahead: int) -> None:
        self.handoff: queue.Queue[Batch | _Done] = queue.Queue(maxsize=ahead)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iter(batches),), name="autoft-batches", daemon=True)
        _Producer.live.add(self)
        self.thread.start()

    def _put(self, item: Batch | _Done) -> bool:
        while not self.stopping.is_set():
            try:
                self.handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[Batch]) -> None:
        try:
            while not self.stopping.is_set():  # checked before making each batch, not only after
                batch = next(batches, None)
                if batch is None:
                    self._put(_Done())
                    return
                if not self._put(batch):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            self._put(_Done(error))

    def get(self) -> Batch | _Done:
        return self.handoff.get()

    def stop(self) -> None:
        """Stop after the batch in progress and wait for the thread."""
        self.stopping.set()
        while True:  # a producer blocked on a full hand-off returns, then sees the flag
            try:
                self.handoff.get_nowait()
            except queue.Empty:
                break
        self.thread.join()
        _Producer.live.discard(self)


@atexit.register
def _stop_producers() -> None:
    for producer in list(_Producer.live):  # streams still open at exit (a search's batch stream)
        producer.stop()


def prefetched(batches: Iterable[Batch], ahead: int = 1) -> Iterator[Batch]:
    """``batches``, each made while the consumer still works on the previous one (a background thread).

    Preparing a batch (index, crop, normalise) costs ~1 ms of host time for 64 images at 32 px; torch
    releases the GIL inside its ops, so a second core can do it during the training step instead of
    before it. The batches and their order are exactly those of ``batches`` (one producer, in order).
    """
    producer = _Producer(batches, ahead)
    try:
        while True:
            item = producer.get()
            if isinstance(item, _Done):
                if item.error is not None:
                    raise item.error
                return
            yield item
    finally:
        producer.stop()  # also when the consumer stops early or fails


def epoch_batches(
    source: ImageBatches,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    drop_last: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Batch]:
    """One pass in an order that depends only on ``seed``; this rank's share of every global batch."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(source), generator=generator) if shuffle else torch.arange(len(source))
    return prefetched(_finished(source, _split(order, batch_size, drop_last), generator, rank, world_size))


def ordered_batches(source: ImageBatches, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[Batch]:
    """Examples ``start:stop`` in order (evaluation; a rank's chunk of a sharded pass)."""
    order = torch.arange(start, len(source) if stop is None else stop)
    batches = _finished(source, _split(order, batch_size, drop_last=False), torch.Generator().manual_seed(0), 0, 1)
    return prefetched(batches)


class BatchStream:
    """An endless stream of shuffled batches from one seeded generator.

    The inner loop of the search draws from ONE stream across trials (as AutoFT does), so each trial
    sees fresh batches while the whole sequence stays a function of the seed.
    """

    def __init__(self, source: ImageBatches, batch_size: int, seed: int) -> None:
        if len(source) == 0:
            raise ValueError("cannot stream batches from an empty training split")
        self.source = source
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._batches: Iterator[Batch] | None = None

    def _next_pass(self) -> Iterator[Batch]:
        order = torch.randperm(len(self.source), generator=self.generator)
        drop_last = len(self.source) >= self.batch_size
        return prefetched(_finished(self.source, _split(order, self.batch_size, drop_last), self.generator, 0, 1))

    def next(self) -> Batch:
        while True:
            if self._batches is None:
                self._batches = self._next_pass()
            batch = next(self._batches, None)
            if batch is not None:
                return batch
            self._batches = None
