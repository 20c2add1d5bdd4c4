"""The paper's presets: each validates, names its dataset's metric and budgets, and its builder runs on
fabricated data end to end (manifests load, an image decodes, the OOD-val subset can be drawn)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from autoft.config import resolve_config
from autoft.data.manifests import load_split
from autoft.data.registry import get_builder
from autoft.data.subsets import ood_val_indices
from autoft.data.templates import FMOW_TEMPLATES, TEMPLATES, imagenet_templates, templates_for
from autoft.methods import method_problems
from fakes.cifar import make_fake_cifar
from fakes.imagenet import make_fake_imagenet
from fakes.wilds import make_fake_fmow, make_fake_iwildcam

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "src" / "autoft" / "presets"

FABRICATORS: dict[str, Callable[[Path], Path]] = {
    "iwildcam": lambda root: make_fake_iwildcam(root, per_split=6),
    "fmow": lambda root: make_fake_fmow(root, per_cell=2),
    "imagenet": lambda root: make_fake_imagenet(root).root,
    "cifar10": lambda root: make_fake_cifar(root).root,
}
# preset -> (metric, OOD-val size, class-balanced, trials, inner steps, epochs, batch size)
PAPER = {
    "iwildcam": ("macro_f1", 1000, True, 500, 100, 20, 256),
    "fmow": ("worst_group_accuracy", 620, True, 500, 100, 20, 256),
    "imagenet": ("accuracy", 1000, False, 100, 5, 10, 512),
    "cifar10": ("accuracy", 100, False, 100, 10, 20, 256),
}


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_preset_validates_with_the_papers_settings(preset: str) -> None:
    config = resolve_config(preset=preset)
    metric, size, balanced, trials, steps, epochs, batch = PAPER[preset]
    assert (config.preset, config.data.dataset) == (preset, preset)
    assert config.metric == metric and config.model_selection_metric == metric
    assert (config.data.ood_val.size, config.data.ood_val.class_balanced) == (size, balanced)
    assert (config.search.n_trials, config.search.inner_steps, config.search.base_lr) == (trials, steps, 1e-5)
    assert (config.finetune.epochs, config.finetune.batch_size, config.finetune.warmup_steps) == (epochs, batch, 500)
    assert (config.model.name, config.model.pretrained) == ("ViT-B-16", "openai")
    assert method_problems(config.methods) == []
    assert (REPO / "pipeline" / "presets" / f"{preset}.yaml").is_file()  # linked for the pipeline


@pytest.mark.parametrize("preset", sorted(PAPER))
def test_preset_builder_runs_on_fabricated_data(preset: str, tmp_path: Path) -> None:
    root = FABRICATORS[preset](tmp_path / "data")
    config = resolve_config(preset=preset, overrides=[f"data.root={root}"])
    out = tmp_path / "prepared"
    splits = get_builder(config.data.dataset)(config, out)
    splits.check()
    assert splits.templates == templates_for(preset)
    for name, manifest in splits.manifests.items():
        images = load_split(out / manifest)
        assert len(images) > 0, name
        assert images.image(len(images) - 1) is not None
    source = load_split(out / splits.manifests["ood_val_source"])
    chosen = ood_val_indices(
        source.labels, config.data.ood_val.size, config.ood_val_seed, config.data.ood_val.class_balanced
    )
    assert len(chosen) > 0


def test_templates_are_the_papers() -> None:
    assert len(imagenet_templates()) == 80 and len(set(imagenet_templates())) == 80
    assert len(FMOW_TEMPLATES) == 16 and len(set(FMOW_TEMPLATES)) == 16
    assert TEMPLATES["iwildcam"] == ("a photo of {c}.", "{c} in the wild.")
    assert TEMPLATES["cifar10"] == ("a photo of a {c}.",)
    assert all(t.count("{c}") == 1 for group in TEMPLATES.values() for t in group)
