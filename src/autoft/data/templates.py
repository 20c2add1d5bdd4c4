"""Prompt templates per dataset; ``{c}`` is the class-name slot (the config schema requires it).

The zero-shot head averages the text embeddings of every template filled with a class name, so the
templates are part of the model: they follow the paper (AUTOFT.md): the 80 OpenAI ImageNet prompts,
two camera-trap prompts for iWildCam, 16 satellite-image prompts for FMoW and one CIFAR prompt.
"""

from __future__ import annotations

# The public prompt-ensemble list released with CLIP (its ImageNet notebook), in its original order
# (order matters only for reproducing FLYP-style captions drawn by index).
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {c}.",
    "a photo of many {c}.",
    "a sculpture of a {c}.",
    "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.",
    "a rendering of a {c}.",
    "graffiti of a {c}.",
    "a bad photo of the {c}.",
    "a cropped photo of the {c}.",
    "a tattoo of a {c}.",
    "the embroidered {c}.",
    "a photo of a hard to see {c}.",
    "a bright photo of a {c}.",
    "a photo of a clean {c}.",
    "a photo of a dirty {c}.",
    "a dark photo of the {c}.",
    "a drawing of a {c}.",
    "a photo of my {c}.",
    "the plastic {c}.",
    "a photo of the cool {c}.",
    "a close-up photo of a {c}.",
    "a black and white photo of the {c}.",
    "a painting of the {c}.",
    "a painting of a {c}.",
    "a pixelated photo of the {c}.",
    "a sculpture of the {c}.",
    "a bright photo of the {c}.",
    "a cropped photo of a {c}.",
    "a plastic {c}.",
    "a photo of the dirty {c}.",
    "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.",
    "a photo of the {c}.",
    "a good photo of the {c}.",
    "a rendering of the {c}.",
    "a {c} in a video game.",
    "a photo of one {c}.",
    "a doodle of a {c}.",
    "a close-up photo of the {c}.",
    "a photo of a {c}.",
    "the origami {c}.",
    "the {c} in a video game.",
    "a sketch of a {c}.",
    "a doodle of the {c}.",
    "a origami {c}.",
    "a low resolution photo of a {c}.",
    "the toy {c}.",
    "a rendition of the {c}.",
    "a photo of the clean {c}.",
    "a photo of a large {c}.",
    "a rendition of a {c}.",
    "a photo of a nice {c}.",
    "a photo of a weird {c}.",
    "a blurry photo of a {c}.",
    "a cartoon {c}.",
    "art of a {c}.",
    "a sketch of the {c}.",
    "a embroidered {c}.",
    "a pixelated photo of a {c}.",
    "itap of the {c}.",
    "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.",
    "a plushie {c}.",
    "a photo of the nice {c}.",
    "a photo of the small {c}.",
    "a photo of the weird {c}.",
    "the cartoon {c}.",
    "art of the {c}.",
    "a drawing of the {c}.",
    "a photo of the large {c}.",
    "a black and white photo of a {c}.",
    "the plushie {c}.",
    "a dark photo of a {c}.",
    "itap of a {c}.",
    "graffiti of the {c}.",
    "a toy {c}.",
    "itap of my {c}.",
    "a photo of a cool {c}.",
    "a photo of a small {c}.",
    "a tattoo of the {c}.",
)

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
    "imagenet": IMAGENET_TEMPLATES,
    "iwildcam": IWILDCAM_TEMPLATES,
    "fmow": FMOW_TEMPLATES,
    "cifar10": CIFAR_TEMPLATES,
    "folder": GENERIC_TEMPLATES,
    "csv": GENERIC_TEMPLATES,
}


def templates_for(dataset: str) -> list[str]:
    """The dataset's prompt templates as a fresh list (callers may extend it)."""
    if dataset not in TEMPLATES:
        raise KeyError(f"no templates for dataset {dataset!r}; known: {sorted(TEMPLATES)}")
    return list(TEMPLATES[dataset])
