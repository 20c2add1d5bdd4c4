"""Build open_clip CLIP models: hub tags, local weight files, gs:// weights, or random init.

The project's tiny configs (context length 16) are registered with open_clip on import, so tests and
the built-in benchmark use the same code path as ViT-B/16 from a real hub.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import nn

from autoft.errors import CheckpointError
from autoft.models.checkpoint import load_state_dict_file
from autoft.urls import is_gcs

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ImageSpec:
    """What the image pipeline must produce for a model: size and normalisation."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class ClipBundle:
    model: nn.Module
    tokenizer: Any
    image: ImageSpec
    model_name: str
    context_length: int


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def available_models() -> list[str]:
    return open_clip.list_models()


def _resolve_weights(pretrained: str, cache_dir: Path | None) -> Path | None:
    """Return a local weights path for a file or gs:// URI, or None for an open_clip hub tag."""
    if is_gcs(pretrained):
        from autoft.storage import download_to_cache

        return download_to_cache(pretrained, cache_dir)
    if pretrained.endswith(WEIGHT_SUFFIXES) or "/" in pretrained or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise CheckpointError(f"pretrained weights file not found: {path}")
        return path
    return None


@functools.lru_cache(maxsize=8)
def tokenizer_for(model_name: str) -> Any:
    """open_clip's tokenizer for a model, built once per process.

    Building it parses the BPE merge table (about 0.1 s); evaluation loads one model per method and
    the tokenizer keeps no per-call state, so all of them share it.
    """
    return open_clip.get_tokenizer(model_name)


def create_clip(
    model_name: str,
    pretrained: str = "",
    *,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
) -> ClipBundle:
    """Create a CLIP model by open_clip name with weights from a tag, a file, a gs:// URI or none."""
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown model {model_name!r}; open_clip knows e.g. ViT-B-16, ViT-L-14-336 and the project's "
            f"{sorted(p.stem for p in MODEL_CONFIG_DIR.glob('*.json'))}"
        )
    weights = _resolve_weights(pretrained, cache_dir) if pretrained else None
    if pretrained and weights is None:
        # An open_clip hub tag such as 'openai': open_clip downloads (or reads its cache).
        model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
    else:
        # open_clip warns "No pretrained weights loaded" here; we load (or deliberately skip) them ourselves.
        with _quiet_root_logger():
            model = open_clip.create_model(model_name, pretrained=None, device=device)
        if weights is not None:
            state = load_state_dict_file(weights)
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError as error:  # strict=False still raises on shape mismatches
                first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), "")
                raise CheckpointError(
                    f"{weights} does not match model {model_name!r}: {first or error}; "
                    "pass the model name it was trained with"
                ) from None
            if missing or unexpected:
                raise CheckpointError(
                    f"{weights} does not match model {model_name!r}: missing {list(missing)[:5]}, "
                    f"unexpected {list(unexpected)[:5]}; pass the model name it was trained with"
                )
    visual = model.visual
    size = visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    image = ImageSpec(
        size=int(size),
        mean=tuple(getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN),
        std=tuple(getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD),
    )
    tokenizer = tokenizer_for(model_name)
    return ClipBundle(
        model=model,
        tokenizer=tokenizer,
        image=image,
        model_name=model_name,
        context_length=int(getattr(tokenizer, "context_length", 77)),
    )
