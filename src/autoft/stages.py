"""The pipeline's steps as library functions over folders.

Each stage reads what earlier stages wrote and writes its own outputs; the CLI (`autoft step ...`),
the KFP components and the in-process runner all call these, so what is tested is what runs.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoft.config import AutoFTConfig
from autoft.data.base import DataError, LabeledImages, indices_hash, load_split, read_manifest, write_manifest
from autoft.data.ds_imagenet import logits_fn_from_manifest
from autoft.data.loaders import BatchStream
from autoft.data.registry import PreparedData, get_builder
from autoft.data.subsets import ood_val_indices
from autoft.data.transforms import eval_transform, train_transform
from autoft.evaluate import Predictions, all_metrics, confusion, metric_value, predict
from autoft.hparams import Hyperparams
from autoft.methods import BASE_METHODS, method_metric, method_search_config
from autoft.models.checkpoint import load_state_dict_file
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier, load_classifier
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.search.study import count_trials, create_or_load_study, run_worker
from autoft.storage import atomic_write_json
from autoft.train import BEST_WEIGHTS, finetune
from autoft.wiseft import interpolate, sweep

log = logging.getLogger(__name__)

BUILTIN_PRETRAINED_PREFIX = "builtin:"
WISEFT_FILE = "wiseft.json"
EVAL_SCHEMA = "autoft.eval/v1"
VALIDATION_SPLITS = ("id_val", "ood_val")


def resolve_device(config: AutoFTConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but no CUDA device is visible; use device=auto or cpu")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the step that writes it first")
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------


def stage_prepare(config: AutoFTConfig, out_dir: Path) -> PreparedData:
    """Build the split manifests, draw the OOD-val subset, register extra eval sets."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = get_builder(config.data.dataset)(config, out_dir)
    splits.check()
    source_manifest = read_manifest(out_dir / splits.manifests["ood_val_source"])
    source = load_split(out_dir / splits.manifests["ood_val_source"])
    chosen = ood_val_indices(
        source.labels, config.data.ood_val.size, config.data.ood_val.seed, config.data.ood_val.class_balanced
    )
    if len(chosen) == 0:
        raise DataError("the OOD-val subset is empty; check data.ood_val and the OOD-val source split")
    # Compose with indices the source manifest already applies, so ours index the underlying data.
    base_indices = np.asarray(source_manifest.get("indices", np.arange(len(source))))
    subset_fields = {k: v for k, v in source_manifest.items() if k not in ("schema", "name", "format", "class_names")}
    subset_fields["indices"] = base_indices[chosen].tolist()
    subset_fields["num_examples"] = len(chosen)
    write_manifest(out_dir / "ood_val.json", "ood_val", source_manifest["format"], splits.class_names, **subset_fields)
    atomic_write_json(out_dir / "ood_val_indices.json", {"source": splits.ood_val_set, "indices": chosen.tolist()})

    manifests = {**splits.manifests, "ood_val": "ood_val.json"}
    extra_tests = []
    for eval_set in config.data.eval_sets:
        from autoft.data.ds_generic import load_eval_set

        images = load_eval_set(eval_set.kind, eval_set.path, splits.class_names)
        from autoft.data.base import save_file_split

        save_file_split(out_dir, f"extra_{eval_set.name}", images)
        manifests[eval_set.name] = f"extra_{eval_set.name}.json"
        extra_tests.append(eval_set.name)
    prepared = PreparedData(
        folder=out_dir,
        dataset=splits.dataset,
        class_names=splits.class_names,
        templates=config.model.templates or splits.templates,
        splits=manifests,
        ood_val_set=splits.ood_val_set,
        ood_tests=[*splits.ood_tests, *extra_tests],
        ood_val_indices_hash=indices_hash(chosen),
        extra=splits.extra,
    )
    prepared.save()
    return prepared


# ----------------------------------------------------------------------------------------------
# zero-shot model
# ----------------------------------------------------------------------------------------------


def resolve_pretrained(config: AutoFTConfig) -> str:
    """Map ``builtin:<name>`` to the cached project foundation model, building it on first use."""
    pretrained = config.model.pretrained
    if not pretrained.startswith(BUILTIN_PRETRAINED_PREFIX):
        return pretrained
    name = pretrained.removeprefix(BUILTIN_PRETRAINED_PREFIX)
    if name != "digits":
        raise ValueError(f"unknown built-in model {pretrained!r}; available: 'builtin:digits'")
    from autoft.models.pretrain import foundation_model
    from autoft.paths import default_cache_dir

    return str(foundation_model(default_cache_dir()))


def stage_zeroshot(config: AutoFTConfig, data_dir: Path, out_dir: Path) -> Path:
    data = PreparedData.load(data_dir)
    torch.manual_seed(config.seed)  # random-init models (pretrained: '') must be reproducible too
    model = build_zeroshot_classifier(
        config.model.name, resolve_pretrained(config), data.class_names, data.templates, config.model.head_mode
    )
    return model.save(Path(out_dir), pretrained=config.model.pretrained, dataset=data.dataset)


# ----------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------


def _split(data: PreparedData, name: str) -> LabeledImages:
    return load_split(data.manifest(name))


def stage_search(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    storage: str,
    worker_index: int = 0,
    progress: bool = True,
    on_trial_end=None,
) -> dict[str, int]:
    """Run one search worker for ``method`` on the shared study until the total budget is met."""
    spec = BASE_METHODS[method]
    if not spec.searches:
        raise ValueError(f"method {method!r} does not search")
    search = method_search_config(config, method)
    device = resolve_device(config)
    data = PreparedData.load(data_dir)
    model = load_classifier(zeroshot_dir, device=device)
    val = _split(data, spec.val_split)
    train = _split(data, "id_train")
    stream = BatchStream(
        _transformed(train, train_transform(model.image_spec)),
        config.data.batch_size,
        seed=config.seed * 7919 + worker_index,
        num_workers=config.data.num_workers,
        device=str(device),
    )
    objective = TrialObjective(
        model,
        SearchSpace.from_config(search),
        stream,
        val,
        eval_transform(model.image_spec),
        metric=method_metric(config, method),
        inner_steps=search.inner_steps,
        device=device,
        dcm_sign=search.dcm_sign,
        pruning=search.pruning,
        prune_reports=search.prune_reports,
        eval_batch_size=config.data.eval_batch_size,
        num_workers=config.data.num_workers,
        on_trial_end=on_trial_end,
    )
    study = create_or_load_study(storage, search, worker_index)
    run_worker(
        study,
        objective,
        search.n_trials,
        max_failed_trials=search.max_failed_trials,
        show_progress=progress,
    )
    return count_trials(study)


def _transformed(images: LabeledImages, transform):
    from autoft.data.base import TransformedImages

    return TransformedImages(images, transform)


def hparams_for(method: str, hparams_files: dict[str, Path]) -> Hyperparams:
    """The hyperparameters a method fine-tunes with (controls reuse another method's lr and wd)."""
    spec = BASE_METHODS[method]
    source = spec.hparams_from or method
    if source not in hparams_files:
        raise FileNotFoundError(f"no searched hyperparameters for {source!r}; run its search first")
    hparams = Hyperparams.from_dict(read_json(hparams_files[source])["hparams"])
    if spec.hparams_from:
        hparams = Hyperparams(weights={"ce": 1.0}, lr=hparams.lr, weight_decay=hparams.weight_decay)
    return hparams


# ----------------------------------------------------------------------------------------------
# fine-tune + WiSE-FT
# ----------------------------------------------------------------------------------------------


def stage_finetune(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    hparams: Hyperparams,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune with ``hparams``, keep the best ID-val epoch, then sweep WiSE-FT alphas on ID-val."""
    out_dir = Path(out_dir)
    device = resolve_device(config)
    data = PreparedData.load(data_dir)
    model = load_classifier(zeroshot_dir, device=device)
    train, id_val = _split(data, "id_train"), _split(data, "id_val")
    torch.manual_seed(config.finetune.seed)
    selection = config.model_selection_metric
    result = finetune(
        model,
        hparams,
        train,
        id_val,
        config.finetune,
        train_transform=train_transform(model.image_spec),
        eval_transform=eval_transform(model.image_spec),
        selection_metric=selection,
        out_dir=out_dir / "train",
        device=device,
        dcm_sign=config.search.dcm_sign,
        num_workers=config.data.num_workers,
        eval_batch_size=config.data.eval_batch_size,
        resume=resume,
        progress=progress,
    )
    finetuned_state = load_state_dict_file(result.best_state_path)
    model.load_state_dict(finetuned_state)
    model.prepare_for_eval()
    model.save(out_dir / "model", hparams=hparams.to_dict(), best_epoch=result.best_epoch)

    zeroshot_state = load_state_dict_file(Path(zeroshot_dir) / "model.safetensors")
    transform = eval_transform(model.image_spec)

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        model.prepare_for_eval()
        preds = predict(model, id_val, transform, batch_size=config.data.eval_batch_size, device=device)
        return metric_value(selection, preds)

    wiseft = sweep(zeroshot_state, finetuned_state, config.wiseft.alphas, score)
    model.load_state_dict(interpolate(zeroshot_state, finetuned_state, wiseft.best_alpha))
    model.prepare_for_eval()
    model.save(out_dir / "wiseft", hparams=hparams.to_dict(), wiseft_alpha=wiseft.best_alpha)
    summary = {
        "hparams": hparams.to_dict(),
        "best_epoch": result.best_epoch,
        "best_id_val": result.best_value,
        "peak_lr": result.peak_lr,
        "history": [vars(h) for h in result.history],
        "wiseft": {"alphas": wiseft.alphas, "id_val": wiseft.values, "best_alpha": wiseft.best_alpha},
    }
    atomic_write_json(out_dir / WISEFT_FILE, summary)
    (out_dir / "train" / BEST_WEIGHTS).unlink(missing_ok=True)  # kept in model/ now
    return summary


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def _evaluate_predictions(preds: Predictions, num_classes: int, metric: str) -> dict[str, Any]:
    metrics = all_metrics(preds)
    if metric not in metrics:
        metrics[metric] = metric_value(metric, preds)
    return {"metrics": metrics, "value": metrics[metric], "confusion": confusion(preds, num_classes).tolist()}


def stage_evaluate(
    config: AutoFTConfig,
    data_dir: Path,
    eval_set: str,
    models: dict[str, Path],
    out_path: Path,
    wiseft_pairs: dict[str, tuple[Path, Path]] | None = None,
) -> dict[str, Any]:
    """Evaluate saved models on one eval set; WiSE-FT pairs (zero-shot, fine-tuned) get a full alpha curve.

    The validation splits get no curve: the report plots ID test against the OOD tests, and the
    fine-tune step has already chosen alpha on ID-val, so a curve there would be pure cost.
    """
    device = resolve_device(config)
    if eval_set in VALIDATION_SPLITS:
        wiseft_pairs = {}
    data = PreparedData.load(data_dir)
    manifest_path = data.manifest(eval_set)
    manifest = read_manifest(manifest_path)
    images = load_split(manifest_path)
    # ImageNet-R/-A project onto 200 classes (logit_indices); ObjectNet max-pools groups (logit_groups).
    logits_fn = logits_fn_from_manifest(manifest)
    results: dict[str, Any] = {"schema": EVAL_SCHEMA, "eval_set": eval_set, "metric": config.metric, "models": {}}

    def run(model: CLIPClassifier) -> dict[str, Any]:
        if logits_fn is None and images.class_names != model.class_names:
            raise DataError(
                f"eval set {eval_set!r} has {len(images.class_names)} classes but the model {model.num_classes}; "
                "give the split a logit projection (logit_indices / logit_groups) or use matching class names"
            )
        model.prepare_for_eval()
        preds = predict(
            model,
            images,
            eval_transform(model.image_spec),
            batch_size=config.data.eval_batch_size,
            device=device,
            num_workers=config.data.num_workers,
            logits_fn=logits_fn,
        )
        return _evaluate_predictions(preds, len(images.class_names), config.metric)

    for name, folder in models.items():
        results["models"][name] = run(load_classifier(folder, device=device))
    curves: dict[str, dict[str, float]] = {}
    for name, (zs_folder, ft_folder) in (wiseft_pairs or {}).items():
        model = load_classifier(ft_folder, device=device)
        zs_state = load_state_dict_file(Path(zs_folder) / "model.safetensors")
        ft_state = load_state_dict_file(Path(ft_folder) / "model.safetensors")
        curves[name] = {}
        for alpha in config.wiseft.alphas:
            model.load_state_dict(interpolate(zs_state, ft_state, alpha))
            curves[name][f"{alpha:.2f}"] = run(model)["value"]
    results["wiseft_curves"] = curves
    atomic_write_json(out_path, results)
    return results
