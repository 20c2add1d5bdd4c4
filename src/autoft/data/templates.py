"""Prompt templates per dataset; ``{c}`` is the class-name slot (the config schema requires it).

The zero-shot head averages the text embeddings of every template filled with a class name, so the
templates are part of the model: they follow the paper (docs/method.md): the 80 OpenAI ImageNet
prompts (open_clip's ``OPENAI_IMAGENET_TEMPLATES``), two camera-trap prompts for iWildCam, 16
satellite-image prompts for FMoW and one CIFAR prompt. Templates are strings with a ``{c}`` slot, so
model cards and configs can store them.
"""

from __future__ import annotations

from functools import cache

IWILDCAM_TEMPLATES: tuple[str, ...] = ("a photo of {c}.", "{c} in the wild.")

# 16 satellite prompts: {satellite, aerial} x {photo, image, view} x {"a", "the", no article}, without the two
# article-free "view" forms (which read badly); written out so the list is plain data reports can show.
FMOW_TEMPLATES: tuple[str, ...] = (
    "satellite photo of a {c}.",
    "aerial photo of a {c}.",
    "satellite photo of the {c}.",
    "aerial photo of the {c}.",
    "satellite photo of {c}.",
    "aerial photo of {c}.",
    "satellite image of a {c}.",
    "aerial image of a {c}.",
    "satellite image of the {c}.",
    "aerial image of the {c}.",
    "satellite image of {c}.",
    "aerial image of {c}.",
    "satellite view of a {c}.",
    "aerial view of a {c}.",
    "satellite view of the {c}.",
    "aerial view of the {c}.",
)

CIFAR_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)

# Image folders and CSV manifests of unknown content: the single most generic CLIP prompt.
GENERIC_TEMPLATES: tuple[str, ...] = ("a photo of a {c}.",)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "iwildcam": IWILDCAM_TEMPLATES,
    "fmow": FMOW_TEMPLATES,
    "cifar10": CIFAR_TEMPLATES,
    "folder": GENERIC_TEMPLATES,
    "csv": GENERIC_TEMPLATES,
}


@cache
def imagenet_templates() -> tuple[str, ...]:
    """open_clip's 80 OpenAI ImageNet prompts (callables there) as ``{c}`` strings, in their order."""
    from open_clip import OPENAI_IMAGENET_TEMPLATES  # imported on use: open_clip pulls in torch and timm

    return tuple(template("{c}") for template in OPENAI_IMAGENET_TEMPLATES)


def templates_for(dataset: str) -> list[str]:
    """The dataset's prompt templates as a fresh list (callers may extend it)."""
    if dataset == "imagenet":
        return list(imagenet_templates())
    if dataset not in TEMPLATES:
        raise KeyError(f"no templates for dataset {dataset!r}; known: {sorted([*TEMPLATES, 'imagenet'])}")
    return list(TEMPLATES[dataset])
