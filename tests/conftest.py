"""Shared fixtures: a tiny random CLIP classifier and small fabricated image splits.

Nothing here touches the network: HF_HUB_OFFLINE is set before open_clip is imported, so a hub tag
fails at once instead of hanging. The tiny model (ViT width 64, 2 layers, 32 px, context 16) makes
a training step take tens of milliseconds on two cores.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub tag fails at once instead of hanging
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch

from autoft.config import AutoFTConfig, validate_config
from autoft.data.images import ArrayImages
from autoft.data.transforms import eval_transform, train_transform
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier
from autoft.models.factory import ImageSpec
from rebuild_job import REBUILD_TEST, RebuildJob

REBUILD_JOB = pytest.StashKey[RebuildJob]()

TINY_MODEL = "autoft-tiny-vit"
IMAGE_SIZE = 32
CLASS_NAMES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {c}.", "a {c} square."]


def synthetic_images(
    n: int,
    class_names: Sequence[str] = CLASS_NAMES,
    seed: int = 0,
    size: int = IMAGE_SIZE,
    groups: Sequence[int] | None = None,
) -> ArrayImages:
    """Learnable fabricated images: class k brightens colour channel k % 3, plus uniform noise.

    Labels cycle through the classes so every class is present whenever ``n >= len(class_names)``.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(class_names)
    images = rng.integers(0, 96, size=(n, size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        images[i, :, :, label % 3] += 150
    return ArrayImages(
        images=images,
        labels=labels,
        class_names=list(class_names),
        groups=None if groups is None else np.asarray(groups),
    )


def tiny_pipeline_config(preset: str, methods: Sequence[str], **changes: object) -> AutoFTConfig:
    """Digits with one OOD shift, a tiny random CLIP, 2 trials x 2 steps, 1 epoch: every step, little compute.

    ``changes`` replace whole top-level sections (e.g. ``tracking={...}``).
    """
    raw = {
        "preset": preset,
        "methods": list(methods),
        "device": "cpu",
        "model": {"name": "autoft-tiny-vit", "pretrained": ""},
        "data": {
            "dataset": "digits",
            "batch_size": 32,
            "eval_batch_size": 512,
            "ood_val": {"size": 60, "class_balanced": True},
            "options": {"ood_test_shifts": ["invert"], "ood_val_min_size": 60},
        },
        "search": {"n_trials": 2, "inner_steps": 2, "base_lr": 1e-4},
        "finetune": {"epochs": 1, "batch_size": 32, "warmup_steps": 2},
        "wiseft": {"alphas": [0.0, 1.0]},
        **changes,
    }
    return validate_config(raw)


def build_tiny_classifier(
    class_names: Sequence[str] = CLASS_NAMES, templates: Sequence[str] = TEMPLATES, seed: int = 0, **kwargs
) -> CLIPClassifier:
    """The tiny zero-shot classifier with random (seeded) weights: same weights for the same seed."""
    torch.manual_seed(seed)
    return build_zeroshot_classifier(TINY_MODEL, "", list(class_names), list(templates), **kwargs)


@pytest.fixture(scope="session")
def class_names() -> list[str]:
    return list(CLASS_NAMES)


@pytest.fixture
def tiny_classifier() -> CLIPClassifier:
    """A fresh tiny zero-shot classifier (linear head mode) for each test: tests mutate it."""
    return build_tiny_classifier()


@pytest.fixture
def make_images() -> Callable[..., ArrayImages]:
    return synthetic_images


@pytest.fixture(scope="session")
def train_images() -> ArrayImages:
    return synthetic_images(48, seed=1)


@pytest.fixture(scope="session")
def val_images() -> ArrayImages:
    return synthetic_images(24, seed=2)


@pytest.fixture(scope="session")
def image_spec() -> ImageSpec:
    return build_tiny_classifier().image_spec


@pytest.fixture(scope="session")
def eval_tf(image_spec: ImageSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    return eval_transform(image_spec)


@pytest.fixture(scope="session")
def train_tf(image_spec: ImageSpec) -> Callable[[torch.Tensor], torch.Tensor]:
    return train_transform(image_spec)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: start the rebuild only when its test will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rebuild = [item for item in items if item.name == REBUILD_TEST]
    if rebuild:
        # The rebuild runs in the background from now on (one thread); its test goes last and collects it.
        items[:] = [item for item in items if item.name != REBUILD_TEST] + rebuild
        config.stash[REBUILD_JOB] = RebuildJob.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    job = session.config.stash.get(REBUILD_JOB, None)
    if job is not None:
        job.stop()


@pytest.fixture
def rebuild_job(request: pytest.FixtureRequest) -> RebuildJob:
    """The session's background rebuild (started at collection; started here when collected otherwise)."""
    job = request.config.stash.get(REBUILD_JOB, None)
    if job is None:
        job = request.config.stash[REBUILD_JOB] = RebuildJob.start()
    return job
