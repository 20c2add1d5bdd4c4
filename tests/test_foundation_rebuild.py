"""The shipped digits foundation model is reproduced by its recipe.

Pretraining runs on one intra-op thread with every random stream seeded from the recipe, so a build is
bitwise deterministic on one machine (docs/results/regime.md: three builds, one SHA-256). Across
machines it need not be: float kernels differ with the CPU's vector ISA (torch dispatches AVX2 or
AVX512 code), so the card records torch's version and, for builds from now on, the CPU capability
(``pretrain.build_environment``). Checks:

* the prefix (about 30-40 s in-process): the first 200 steps of the default recipe reproduce the
  smoothed loss the card recorded at steps 100 and 200 when the shipped model was built: exactly (4
  decimals) in the build's environment, within 1e-3 elsewhere;
* the full rebuild (marker ``rebuild``; part of ``make test``, ``make test-rebuild`` runs it alone): the
  whole recipe in a fresh subprocess with one thread gives the shipped file's SHA-256 in the build's
  environment, or the SHA-256 recorded for this environment in ``weights/rebuilds.json``; and the
  rebuilt and the shipped model's zero-shot accuracy on the digits ID test split (data seed 0) agree
  within 1 point (OOD avg within 5: the AVX2 rebuild is 3.0 points below the shipped model there). It
  took 903 s wall (about 610 s CPU) on one thread of this shared 2-core AVX2 machine, so the session
  starts it in the background at collection (``tests/rebuild_job.py``) and runs its test last.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoft.models import pretrain
from autoft.models.pretrain import DEFAULT_RECIPE, build_environment, file_sha256, shipped_model_path
from rebuild_job import RebuildJob

PREFIX_STEPS = 200


def _card() -> dict:
    shipped = shipped_model_path(DEFAULT_RECIPE)
    assert shipped is not None, "the default recipe's weights must ship with the package"
    return json.loads(shipped.with_suffix(".json").read_text())


def same_environment(card: dict) -> bool:
    """Whether this process can expect the card's build bitwise (cards before the capability field: unknown)."""
    return all(card.get(key) == value for key, value in build_environment().items())


def test_first_steps_of_the_recipe_reproduce_the_recorded_loss() -> None:
    card = _card()
    recorded = [tuple(point) for point in card["loss_history"] if point[0] <= PREFIX_STEPS]
    assert [step for step, _ in recorded] == [100, 200]
    result = pretrain.pretrain_clip(DEFAULT_RECIPE, progress=False, stop_after=PREFIX_STEPS)
    if same_environment(card):
        assert result.loss_history == recorded  # smoothed loss, rounded to 4 decimals when the card was written
    else:
        # Measured on an AVX2 machine against the shipped card: 4.8045 / 4.5429 vs 4.8045 / 4.543.
        assert [s for s, _ in result.loss_history] == [s for s, _ in recorded]
        assert all(abs(a - b) <= 1e-3 for (_, a), (_, b) in zip(result.loss_history, recorded, strict=True))


def test_stop_after_is_a_prefix_of_the_same_run() -> None:
    tiny = pretrain.PretrainRecipe(steps=4, batch_size=8, warmup_steps=1, printed_images=20, printed_share=0.5)
    two = pretrain.pretrain_clip(tiny, progress=False, stop_after=2)
    again = pretrain.pretrain_clip(tiny, progress=False, stop_after=2)
    full = pretrain.pretrain_clip(tiny, progress=False)
    assert all(torch.equal(two.state[k], again.state[k]) for k in two.state)
    assert not all(torch.equal(two.state[k], full.state[k]) for k in two.state)


def _rebuilds() -> dict:
    shipped = shipped_model_path(DEFAULT_RECIPE)
    assert shipped is not None
    return json.loads((shipped.parent / "rebuilds.json").read_text())["rebuilds"]


@pytest.mark.rebuild
def test_full_rebuild_reproduces_the_shipped_model(tmp_path: Path, rebuild_job: RebuildJob) -> None:
    card = _card()
    built = rebuild_job.result()
    print(f"full rebuild: {built['seconds']} s, sha256 {built['sha256']}")
    shipped = shipped_model_path(DEFAULT_RECIPE)
    assert shipped is not None and card["sha256"] == file_sha256(shipped)
    if same_environment(card):
        assert built["sha256"] == card["sha256"]
        return
    environment = build_environment()
    recorded = _rebuilds().get(f"{environment['torch']}/{environment['cpu_capability']}")
    if recorded is not None:  # a machine like this one rebuilt it before: bitwise the same again
        assert built["sha256"] == recorded["sha256"]
    # Other kernels sum floats in another order: the bits differ, the model must still be the same model.
    from autoft.config import resolve_config
    from autoft.data.manifests import load_split
    from autoft.data.transforms import eval_transform
    from autoft.evaluate import accuracy, predict
    from autoft.models.classifier import build_zeroshot_classifier
    from autoft.stages import stage_prepare

    data = stage_prepare(resolve_config(preset="digits"), tmp_path / "data")
    splits = {name: load_split(data.manifest(name)) for name in ["id_test", *data.ood_tests]}
    scores = []
    for weights in (built["path"], str(shipped)):
        model = build_zeroshot_classifier(
            DEFAULT_RECIPE.model_name, weights, data.class_names, data.templates, "linear"
        )
        transform = eval_transform(model.image_spec)
        acc = {name: accuracy(predict(model, images, transform, batch_size=512)) for name, images in splits.items()}
        scores.append((acc["id_test"], sum(acc[s] for s in data.ood_tests) / len(data.ood_tests)))
    (rebuilt_id, rebuilt_ood), (shipped_id, shipped_ood) = scores
    print(
        f"zero-shot ID test / OOD avg: rebuilt {rebuilt_id:.4f} / {rebuilt_ood:.4f}, "
        f"shipped {shipped_id:.4f} / {shipped_ood:.4f}"
    )
    context = (build_environment(), card.get("cpu_capability"), scores)
    assert abs(rebuilt_id - shipped_id) <= 0.01, context
    # Robustness is looser: the AVX2 rebuild has the same ID test (86.5) but OOD avg 68.7 vs 71.6
    # (rebuilds.json). A sanity bound, not a reproduction claim.
    assert abs(rebuilt_ood - shipped_ood) <= 0.05, context
