"""The input pipeline: decoded-once splits give torchvision's evaluation pixels exactly, training crops are
RandomResizedCrop's family, and batches depend on the seed only (not on memory, workers or ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from autoft.data.images import ArrayImages, FileImages
from autoft.data.loaders import (
    BatchStream,
    ImageBatches,
    InputSettings,
    epoch_batches,
    ordered_batches,
    resolve_workers,
)
from autoft.data.transforms import (
    CROP_RATIO,
    CROP_SCALE,
    eval_transform,
    random_resized_crop_boxes,
    resized_crops,
    torchvision_eval_transform,
    train_transform,
)
from autoft.distributed import Dist
from autoft.models.factory import ImageSpec

SPEC = ImageSpec(size=32, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
STREAMED = InputSettings(memory_budget_mb=0)  # every pass decodes again, as for a split over the budget


def _arrays(n: int, size: int, seed: int = 0) -> ArrayImages:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    return ArrayImages(images=images, labels=np.arange(n) % 3, class_names=["a", "b", "c"])


def _files(folder: Path, sizes: list[tuple[int, int]]) -> FileImages:
    rng = np.random.default_rng(1)
    paths = []
    for i, (width, height) in enumerate(sizes):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return FileImages(paths=paths, labels=np.arange(len(sizes)) % 3, class_names=["a", "b", "c"])


def _reference(images: ArrayImages | FileImages) -> torch.Tensor:
    pipeline = torchvision_eval_transform(SPEC)
    return torch.stack([pipeline(images.image(i)) for i in range(len(images))])


def _all(source: ImageBatches, batch_size: int = 4) -> torch.Tensor:
    return torch.cat([batch.images for batch in ordered_batches(source, batch_size)])


@pytest.mark.parametrize("size", [32, 24, 48])
@pytest.mark.parametrize("settings", [InputSettings(), STREAMED], ids=["in_memory", "streamed"])
def test_array_splits_evaluate_exactly_as_torchvision_does(size: int, settings: InputSettings) -> None:
    images = _arrays(10, size)
    reference = torchvision_eval_transform(SPEC)
    expected = torch.stack([reference(torch.from_numpy(images.image(i)).permute(2, 0, 1)) for i in range(10)])
    source = ImageBatches(images, eval_transform(SPEC), settings)
    assert source.in_memory == (settings is not STREAMED)
    assert source.native == (size <= SPEC.size)  # small arrays stay as they are; larger ones are stored resized
    assert torch.equal(_all(source), expected)
    assert torch.equal(source.labels, torch.as_tensor(images.labels))


@pytest.mark.parametrize("settings", [InputSettings(), STREAMED], ids=["in_memory", "streamed"])
def test_file_splits_of_mixed_sizes_evaluate_exactly_as_torchvision_does(
    tmp_path: Path, settings: InputSettings
) -> None:
    images = _files(tmp_path, [(40, 30), (32, 32), (20, 50), (64, 48), (31, 33)])
    source = ImageBatches(images, eval_transform(SPEC), settings)
    assert source.base_shape == (32, 32)
    assert torch.equal(_all(source, batch_size=2), _reference(images))


def test_a_subset_of_an_array_split_decodes_its_own_rows() -> None:
    images = _arrays(12, 32).subset([5, 0, 7])
    source = ImageBatches(images, eval_transform(SPEC))
    assert torch.equal(_all(source), _reference(images))


def test_the_memory_budget_decides_the_path() -> None:
    images = _arrays(64, 32)  # 64 x 3 x 32 x 32 bytes = 0.1875 MiB
    assert ImageBatches(images, eval_transform(SPEC), InputSettings(memory_budget_mb=1)).in_memory
    assert not ImageBatches(images, eval_transform(SPEC), InputSettings(memory_budget_mb=0)).in_memory


def test_crop_boxes_follow_random_resized_crop() -> None:
    generator = torch.Generator().manual_seed(0)
    boxes = random_resized_crop_boxes(2000, 40, 44, generator)
    top, left, h, w = boxes.unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 44).all()
    area = (h * w).float() / (40 * 44)
    aspect = w.float() / h.float()
    # Rounding to whole pixels moves area and aspect a little past the continuous ranges.
    assert area.min() >= CROP_SCALE[0] - 0.05 and area.max() <= CROP_SCALE[1] + 1e-6
    assert aspect.min() >= CROP_RATIO[0] - 0.05 and aspect.max() <= CROP_RATIO[1] + 0.05
    assert len({tuple(b) for b in boxes.tolist()}) > 30  # random, not one box
    again = random_resized_crop_boxes(2000, 40, 44, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_crop_boxes_fall_back_to_a_centre_crop_when_no_draw_fits() -> None:
    # A 1-pixel-high strip: no box of 90 % area at aspect <= 4/3 fits, so every image gets the centre crop
    # at the widest allowed aspect, as torchvision's fallback does.
    boxes = random_resized_crop_boxes(5, 1, 40, torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 19, 1, 1]] * 5


def test_batched_crops_equal_torchvisions_resized_crop() -> None:
    images = torch.rand(6, 3, 24, 30)
    boxes = random_resized_crop_boxes(6, 24, 30, torch.Generator().manual_seed(3))
    got = resized_crops(images, boxes, 32)
    for image, (top, left, h, w), crop in zip(images, boxes.tolist(), got, strict=True):
        expected = TF.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        torch.testing.assert_close(crop, expected, rtol=0, atol=1e-5)


def test_training_batches_depend_on_the_seed_only() -> None:
    images = _arrays(40, 28)
    memory = ImageBatches(images, train_transform(SPEC))
    streamed = ImageBatches(images, train_transform(SPEC), STREAMED)
    first = list(epoch_batches(memory, 8, seed=5))
    assert len(first) == 5 and first[0].images.shape == (8, 3, 32, 32)
    for a, b in zip(first, epoch_batches(streamed, 8, seed=5), strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    other = list(epoch_batches(memory, 8, seed=6))
    assert not torch.equal(first[0].labels, other[0].labels) or not torch.equal(first[0].images, other[0].images)


def test_each_rank_gets_its_contiguous_share_of_the_same_global_batch() -> None:
    images = _arrays(24, 32)
    source = ImageBatches(images, train_transform(SPEC))
    whole = list(epoch_batches(source, 8, seed=1))
    shares = [list(epoch_batches(source, 8, seed=1, rank=rank, world_size=2)) for rank in range(2)]
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([shares[0][step].images, shares[1][step].images]), batch.images)
        assert torch.equal(torch.cat([shares[0][step].labels, shares[1][step].labels]), batch.labels)
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        next(epoch_batches(source, 8, seed=1, rank=0, world_size=3))


def test_the_stream_is_endless_and_a_function_of_its_seed() -> None:
    source = ImageBatches(_arrays(10, 32), train_transform(SPEC))
    a, b = BatchStream(source, 4, seed=2), BatchStream(source, 4, seed=2)
    labels = [a.next().labels for _ in range(7)]  # 2 full batches a pass: 3.5 passes
    assert all(len(x) == 4 for x in labels)
    assert all(torch.equal(x, b.next().labels) for x in labels)
    small = BatchStream(ImageBatches(_arrays(3, 32), train_transform(SPEC)), 4, seed=0)
    assert len(small.next().labels) == 3  # a split smaller than a batch streams whole passes


def test_sharded_evaluation_chunks_cover_the_split_once() -> None:
    for count in (0, 1, 5, 10, 11):
        for world in (1, 2, 3, 4):
            chunks = [Dist(rank, world).chunk(count) for rank in range(world)]
            covered = [i for start, stop in chunks for i in range(start, stop)]
            assert covered == list(range(count)), (count, world)


def test_auto_workers_leave_a_core_to_the_training_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import autoft.data.loaders as loaders

    monkeypatch.setattr(loaders, "available_cpus", lambda: 16)
    assert resolve_workers("auto") == 8 and resolve_workers("auto", processes=4) == 3
    assert resolve_workers(3) == 3
    monkeypatch.setattr(loaders, "available_cpus", lambda: 1)
    assert resolve_workers("auto") == 0


def test_a_consumer_that_stops_early_leaves_no_thread_behind() -> None:
    source = ImageBatches(_arrays(40, 32), train_transform(SPEC))
    batches = epoch_batches(source, 8, seed=0)
    next(batches)
    batches.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "autoft-batches"]


def test_a_stream_left_open_at_exit_does_not_abort_the_interpreter() -> None:
    # A thread inside a torch op while the interpreter shuts down aborts the process ("terminate called
    # without an active exception"): a search worker's batch stream is still prefetching when it exits.
    script = (
        "import numpy as np\n"
        "from autoft.data.images import ArrayImages\n"
        "from autoft.data.loaders import BatchStream, ImageBatches\n"
        "from autoft.data.transforms import train_transform\n"
        "from autoft.models.factory import ImageSpec\n"
        "spec = ImageSpec(224, (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))\n"
        "images = np.random.default_rng(0).integers(0, 255, (256, 224, 224, 3), dtype=np.uint8)\n"
        "split = ArrayImages(images=images, labels=np.arange(256) % 3, class_names=['a', 'b', 'c'])\n"
        "BatchStream(ImageBatches(split, train_transform(spec)), 128, seed=0).next()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "terminate" not in result.stderr, result.stderr


def test_workers_stream_the_same_batches_epoch_after_epoch(tmp_path: Path) -> None:
    # The path of splits over the budget (ImageNet's train split): file decoding in persistent workers,
    # the same DataLoader reused each epoch with that epoch's plan.
    images = _files(tmp_path, [(40, 30), (32, 32), (20, 50), (64, 48), (31, 33), (36, 36), (50, 40), (33, 45)])
    memory = ImageBatches(images, train_transform(SPEC))
    workers = ImageBatches(images, train_transform(SPEC), InputSettings(memory_budget_mb=0, num_workers=1))
    assert memory.in_memory and not workers.in_memory
    for epoch in range(2):
        for a, b in zip(epoch_batches(memory, 4, seed=epoch), epoch_batches(workers, 4, seed=epoch), strict=True):
            assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
