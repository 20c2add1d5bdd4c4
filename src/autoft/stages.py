"""The pipeline's steps as library functions over folders.

Each stage reads what earlier stages wrote and writes its own outputs (typed files from
:mod:`autoft.contracts`); the CLI (`autoft step ...`), the KFP components and the in-process runner
all call these, so what is tested is what runs. The study-only stages (create, select-best) are in
:mod:`autoft.study_stages`, which starts without torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial

from autoft.config import AutoFTConfig, config_to_dict
from autoft.contracts import (
    VALIDATION_SPLITS,
    EpochRecord,
    EvalResult,
    FinetuneJob,
    FinetuneSummary,
    ModelEval,
    PreparedData,
    SearchResult,
    WiseFTChoice,
)
from autoft.curve_file import CURVES_FILE, curve_file_size, replay_curves
from autoft.data.images import LabeledImages, check_readable
from autoft.data.loaders import BatchStream, ImageBatches, InputSettings, resolve_workers
from autoft.data.manifests import load_split, logits_fn_from_manifest, read_manifest, save_file_split
from autoft.data.ood_val import HOLDOUT_SPLIT, OOD_VAL_SPLIT, draw_ood_val, load_scored_split
from autoft.data.registry import get_builder
from autoft.data.transforms import eval_transform, train_transform
from autoft.distributed import SINGLE, Dist, distributed, launch
from autoft.durable import DurableCheckpoints
from autoft.errors import CheckpointError, ConfigError, DataError
from autoft.evaluate import Predictions, all_metrics, confusion, metric_value, predict_batches
from autoft.hparams import Hyperparams
from autoft.methods import BASE_METHODS, hparams_source
from autoft.models.checkpoint import WEIGHTS_FILE, load_state_dict_file
from autoft.models.classifier import CLIPClassifier, build_zeroshot_classifier, load_classifier
from autoft.models.factory import ImageSpec
from autoft.observers import TrainingObserver
from autoft.search.objective import TrialObjective
from autoft.search.space import SearchSpace
from autoft.search.study import count_trials, create_or_load_study, run_worker, worker_quota
from autoft.train import BEST_WEIGHTS, check_fingerprint, finetune_batches
from autoft.wiseft import interpolate, sweep

log = logging.getLogger(__name__)

BUILTIN_PRETRAINED_PREFIX = "builtin:"
# The headline metric of a WILDS split comes from WILDS' own evaluator: our metric -> its key.
WILDS_METRIC_KEYS = {"macro_f1": "F1-macro_all", "worst_group_accuracy": "acc_worst_region", "accuracy": "acc_avg"}


def check_batch_fits(batch_size: int, examples: int, field: str) -> None:
    """A batch larger than the training split would silently become the whole split, every step."""
    if batch_size > examples:
        raise ConfigError(
            f"{field}={batch_size} is larger than the training split ({examples} examples); set {field} to at most "
            f"{examples}"
        )


def resolve_device(config: AutoFTConfig, dist: Dist = SINGLE) -> torch.device:
    """The device of this process: the configured kind; with several processes, this rank's GPU."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but no CUDA device is visible; set device=auto or device=cpu")
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
    return torch.device(kind, dist.local_rank) if kind == "cuda" and dist.active else torch.device(kind)


def input_settings(config: AutoFTConfig, device: torch.device, processes: int = 1) -> InputSettings:
    """How this process batches splits: in memory within ``data.memory_budget_mb``, else with workers."""
    return InputSettings(device, config.data.memory_budget_mb, resolve_workers(config.data.num_workers, processes))


# ----------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------


def stage_prepare(config: AutoFTConfig, out_dir: Path) -> PreparedData:
    """Build the split manifests, draw the OOD-val subset, register extra eval sets."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = get_builder(config.data.dataset)(config, out_dir)
    splits.check()
    drawn = draw_ood_val(out_dir, splits, config.data.ood_val, config.ood_val_seed)
    manifests = {**splits.manifests, **drawn.manifests}
    taken = [item.name for item in config.data.eval_sets if item.name in manifests]
    if taken:
        raise ConfigError(
            f"data.eval_sets names {taken} are splits of dataset {config.data.dataset!r} already "
            f"({sorted(manifests)}); rename the eval sets"
        )
    extra_tests = []
    for eval_set in config.data.eval_sets:
        from autoft.data.ds_generic import eval_set_root, load_eval_set

        images = load_eval_set(eval_set.kind, eval_set.path, splits.class_names, eval_set.allow_absolute_paths)
        root = eval_set_root(eval_set.kind, eval_set.path)
        save_file_split(out_dir, f"extra_{eval_set.name}", images, root=root)
        manifests[eval_set.name] = f"extra_{eval_set.name}.json"
        extra_tests.append(eval_set.name)
    prepared = PreparedData(
        dataset=splits.dataset,
        class_names=splits.class_names,
        templates=config.model.templates or splits.templates,
        splits=manifests,
        ood_val_set=splits.ood_val_set,
        ood_tests=[*splits.ood_tests, *extra_tests],
        ood_val_indices_hash=drawn.indices_hash,
        ood_val_distinct=drawn.distinct,
        ood_val_examples=drawn.examples,
        ood_val_holdout_distinct=drawn.holdout_distinct,
        ood_val_holdout_examples=drawn.holdout_examples,
        extra=splits.extra,
    )
    prepared.save_in(out_dir)
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
        raise ConfigError(f"unknown built-in model {pretrained!r}; available: 'builtin:digits'")
    from autoft.models.pretrain import foundation_model
    from autoft.paths import default_cache_dir

    return str(foundation_model(default_cache_dir()))


def stage_zeroshot(config: AutoFTConfig, data_dir: Path, out_dir: Path) -> Path:
    resolve_device(config)  # an unusable device fails here, in the first step that builds a model
    data = PreparedData.load_from(data_dir)
    torch.manual_seed(config.seed)  # random-init models (pretrained: '') must be reproducible too
    model = build_zeroshot_classifier(
        config.model.name, resolve_pretrained(config), data.class_names, data.templates, config.model.head_mode
    )
    return model.save(Path(out_dir), pretrained=config.model.pretrained, dataset=data.dataset)


# ----------------------------------------------------------------------------------------------
# search
# ----------------------------------------------------------------------------------------------


def stage_search(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    storage: str,
    worker_index: int = 0,
    workers: int = 1,
    progress: bool = True,
    trial_callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> dict[str, int]:
    """Run worker ``worker_index`` of ``workers`` for ``method``: its share of the study's total budget."""
    search = config.search_for(method)
    worker_quota(search.n_trials, workers, worker_index)  # a bad index fails before any compute
    device = resolve_device(config)
    data = PreparedData.load_from(data_dir)
    model = load_classifier(zeroshot_dir, device=device)
    val_split = BASE_METHODS[method].val_split
    val, val_sources = load_scored_split(data.manifest(val_split))
    # Searches on OOD-val also score every trial on the held-out images (the winner's-curse re-score).
    holdout, holdout_sources = (
        load_scored_split(data.manifest(HOLDOUT_SPLIT))
        if val_split == OOD_VAL_SPLIT and HOLDOUT_SPLIT in data.splits
        else (None, None)
    )
    train = load_split(data.manifest("id_train"))
    check_batch_fits(config.data.batch_size, len(train), "data.batch_size")
    settings = input_settings(config, device)
    stream = BatchStream(
        ImageBatches(train, train_transform(model.image_spec), settings),
        config.data.batch_size,
        seed=config.search_seed * 7919 + worker_index,
    )
    objective = TrialObjective(
        model,
        SearchSpace.from_config(search),
        stream,
        val,
        eval_transform(model.image_spec),
        metric=config.metric_for(method),
        inner_steps=search.inner_steps,
        device=device,
        dcm_sign=search.dcm_sign,
        report_steps=search.report_steps(),
        eval_batch_size=config.data.eval_batch_size,
        num_workers=settings.num_workers,
        memory_budget_mb=settings.memory_budget_mb,
        train_token_embedding=(
            config.model.train_token_embedding if search.train_token_embedding is None else search.train_token_embedding
        ),
        ood_val_sources=val_sources,
        holdout=holdout,
        holdout_sources=holdout_sources,
    )
    study = create_or_load_study(storage, search, worker_index)
    run_worker(
        study,
        objective,
        search.n_trials,
        worker_index=worker_index,
        workers=workers,
        max_failed_trials=search.max_failed_trials,
        show_progress=progress,
        callbacks=trial_callbacks,
        storage=storage,  # a lease on the worker index: a second live worker with it exits with one line
    )
    return count_trials(study)


def finetune_hparams(method: str, search_results: dict[str, Path]) -> Hyperparams:
    """The hyperparameters a method fine-tunes with: its own search's best, or (controls) cross-entropy at
    the lr and weight decay its source method's search chose."""
    source = hparams_source(method)
    if source not in search_results:
        raise ConfigError(f"no search result for {source!r} (method {method!r} fine-tunes with it); run its search")
    chosen = SearchResult.load(search_results[source])
    if chosen.method != source:
        raise ConfigError(f"{search_results[source]} holds {chosen.method!r}'s search, not {source!r}'s")
    if BASE_METHODS[method].hparams_from:
        return Hyperparams(weights={"ce": 1.0}, lr=chosen.hparams.lr, weight_decay=chosen.hparams.weight_decay)
    return chosen.hparams


# ----------------------------------------------------------------------------------------------
# fine-tune + WiSE-FT
# ----------------------------------------------------------------------------------------------


FINETUNE_WORKER = "autoft.finetune_worker"  # the module each torchrun process runs (python -m)


def stage_finetune(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    hparams: Hyperparams,
    out_dir: Path,
    resume: bool = False,
    progress: bool = True,
    observer: TrainingObserver | None = None,
    nproc: int = 1,
    durable_root: str = "",
) -> FinetuneSummary:
    """Fine-tune with ``hparams``, keep the best ID-val epoch, then choose the WiSE-FT alpha (``wiseft.select_on``).

    Writes ``model/`` and ``wiseft/`` (saved classifiers), ``train/`` (epoch checkpoints) and
    ``finetune.json`` (:class:`FinetuneSummary`) under ``out_dir``. With ``resume``, a run cut short
    continues from its last finished epoch, and a finished one is left as it is; either must be the same
    run (:func:`finetune_fingerprint`), whatever the number of processes that wrote it.

    ``observer`` hears each optimizer step and each epoch (for tracking).

    ``durable_root`` (a gs:// prefix or a folder, :class:`autoft.durable.DurableCheckpoints`) receives each
    epoch's checkpoint; a step started again with the same root (a retried or preempted pod, with an empty
    ``out_dir``) first restores the latest one and resumes from it.

    ``nproc`` > 1 starts that many processes on this node under torchrun (one per GPU; gloo on CPUs) and
    waits for them: DDP training, ID-val sharded over the ranks, rank 0 writing (:mod:`autoft.distributed`);
    rank 0 records the observer's calls in a file that is replayed to ``observer`` afterwards. A process
    that torchrun started (WORLD_SIZE in its environment) runs as its rank.
    """
    out_dir = Path(out_dir)
    try:
        return _finetune_restored(
            config, data_dir, zeroshot_dir, method, hparams, out_dir, resume, progress, observer, nproc, durable_root
        )
    except CheckpointError as error:
        if not durable_root or "different fine-tuning run" not in str(error):
            raise
        # The checkpoint came from --checkpoint-root: another output folder would not help, another root does.
        differs = re.search(r"\(([^()]*) differs?\)", str(error))
        what = f" ({differs.group(1)} differ)" if differs else ""
        raise CheckpointError(
            f"the checkpoint in --checkpoint-root {durable_root} belongs to a different fine-tuning run{what}; "
            "give this run its own fresh --checkpoint-root (each run and method needs one), then start it again "
            "with --overwrite"
        ) from None


def _finetune_restored(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    hparams: Hyperparams,
    out_dir: Path,
    resume: bool,
    progress: bool,
    observer: TrainingObserver | None,
    nproc: int,
    durable_root: str,
) -> FinetuneSummary:
    restored: int | None = None
    # The launching process restores (once); torchrun's ranks, started with WORLD_SIZE, find it on disk.
    if durable_root and "WORLD_SIZE" not in os.environ:
        restored = DurableCheckpoints(durable_root).restore(out_dir / "train")
        if restored is not None:
            print(f"resumed {method} from epoch {restored + 1} ({durable_root})", flush=True)
            resume = True
    if nproc > 1:
        curves = out_dir / "train" / CURVES_FILE
        start = curve_file_size(curves)
        summary = _launch_finetune(
            config,
            data_dir,
            zeroshot_dir,
            method,
            hparams,
            out_dir,
            resume,
            progress,
            nproc,
            observer is not None,
            durable_root,
        )
        if observer is not None:
            replay_curves(curves, observer, start)
        return summary
    with distributed(resolve_device(config).type) as dist:
        return _finetune_rank(
            config, data_dir, zeroshot_dir, method, hparams, out_dir, resume, progress, observer, dist, durable_root
        )


def _launch_finetune(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    hparams: Hyperparams,
    out_dir: Path,
    resume: bool,
    progress: bool,
    nproc: int,
    record_curves: bool,
    durable_root: str = "",
) -> FinetuneSummary:
    out_dir.mkdir(parents=True, exist_ok=True)
    job = FinetuneJob(
        config=config_to_dict(config),
        data_dir=str(Path(data_dir).resolve()),
        zeroshot_dir=str(Path(zeroshot_dir).resolve()),
        method=method,
        hparams=hparams,
        out_dir=str(out_dir.resolve()),
        resume=resume,
        progress=progress,
        record_curves=record_curves,
        durable_root=durable_root,
    )
    # The job holds the whole config (maybe a storage URL with a password): a private folder, removed after.
    with tempfile.TemporaryDirectory(prefix="autoft-finetune-job-") as folder:
        launch(nproc, FINETUNE_WORKER, [str(job.save(Path(folder) / FinetuneJob.FILE))])
    return FinetuneSummary.load(out_dir / FinetuneSummary.FILE)


def _finetune_rank(
    config: AutoFTConfig,
    data_dir: Path,
    zeroshot_dir: Path,
    method: str,
    hparams: Hyperparams,
    out_dir: Path,
    resume: bool,
    progress: bool,
    observer: TrainingObserver | None,
    dist: Dist,
    durable_root: str = "",
) -> FinetuneSummary:
    """What each process of a fine-tuning step does (the only process, in the ordinary case)."""
    started = time.perf_counter()
    device = resolve_device(config, dist)
    data = PreparedData.load_from(data_dir)
    fingerprint = finetune_fingerprint(config, data, Path(zeroshot_dir), method, hparams)
    finished = out_dir / FinetuneSummary.FILE
    if resume and finished.is_file():
        summary = FinetuneSummary.load(finished)
        check_fingerprint(summary.fingerprint, fingerprint, finished)
        log.info("fine-tuning %s already finished in %s: nothing to resume", method, out_dir)
        return summary
    check_batch_fits(config.finetune.batch_size, len(load_split(data.manifest("id_train"))), "finetune.batch_size")
    model = load_classifier(zeroshot_dir, device=device)
    settings = input_settings(config, device, dist.world_size)
    train = ImageBatches(load_split(data.manifest("id_train")), train_transform(model.image_spec), settings)
    id_val = ImageBatches(load_split(data.manifest("id_val")), eval_transform(model.image_spec), settings)
    torch.manual_seed(config.finetune_seed)
    selection = config.model_selection_metric
    durable = DurableCheckpoints(durable_root) if durable_root and dist.is_main else None

    def save_durably(epoch: int) -> None:
        if durable is not None:
            target = durable.save(out_dir / "train", epoch)
            print(f"durable checkpoint of {method}: epoch {epoch + 1}/{config.finetune.epochs} -> {target}", flush=True)

    result = finetune_batches(
        model,
        hparams,
        train,
        id_val,
        config.finetune.model_copy(update={"seed": config.finetune_seed}),
        selection_metric=selection,
        out_dir=out_dir / "train",
        device=device,
        dcm_sign=config.search.dcm_sign,
        eval_batch_size=config.data.eval_batch_size,
        resume=resume,
        progress=progress,
        fingerprint=fingerprint,
        observer=observer if dist.is_main else None,
        dist=dist,
        train_token_embedding=config.model.train_token_embedding,
        on_checkpoint=save_durably,
        patience=early_stopping_patience(config, method),
    )
    finetuned_state = load_state_dict_file(result.best_state_path)
    model.load_state_dict(finetuned_state)
    model.prepare_for_eval()
    if dist.is_main:
        model.save(out_dir / "model", method=method, hparams=hparams.to_dict(), best_epoch=result.best_epoch)

    zeroshot_state = load_state_dict_file(Path(zeroshot_dir) / WEIGHTS_FILE)
    choice = choose_wiseft_alpha(config, data, model, zeroshot_state, finetuned_state, settings, dist)
    model.load_state_dict(interpolate(zeroshot_state, finetuned_state, choice.best_alpha))
    model.prepare_for_eval()
    summary = FinetuneSummary(
        method=method,
        hparams=hparams,
        best_epoch=result.best_epoch,
        best_id_val=result.best_value,
        peak_lr=result.peak_lr,
        history=[EpochRecord(**vars(record)) for record in result.history],
        wiseft=choice,
        seconds=round(time.perf_counter() - started, 3),
        fingerprint=fingerprint,
        processes=dist.world_size,
        stopped_early=result.stopped_early,
    )
    if dist.is_main:
        model.save(
            out_dir / "wiseft", method=f"{method}_wiseft", hparams=hparams.to_dict(), wiseft_alpha=choice.best_alpha
        )
        summary.save(out_dir / FinetuneSummary.FILE)
        (out_dir / "train" / BEST_WEIGHTS).unlink(missing_ok=True)  # kept in model/ now
    dist.barrier()
    return summary


def early_stopping_patience(config: AutoFTConfig, method: str) -> int:
    """Grid-tuned baselines stop early on ID-val (``baselines.patience``); the other methods run every epoch."""
    return config.baselines.patience if BASE_METHODS[method].grid else 0


def choose_wiseft_alpha(
    config: AutoFTConfig,
    data: PreparedData,
    model: CLIPClassifier,
    zeroshot_state: dict[str, torch.Tensor],
    finetuned_state: dict[str, torch.Tensor],
    settings: InputSettings,
    dist: Dist = SINGLE,
) -> WiseFTChoice:
    """The WiSE-FT alpha, chosen the same way for every method (``wiseft.select_on``).

    On OOD-val (the default: the set AutoFT's search scores, with the run's metric) or on ID-val (the
    selection metric) every alpha of ``wiseft.alphas`` is scored and the best kept (ties: the larger alpha,
    the less interpolated model); ``fixed`` takes ``wiseft.fixed_alpha`` without scoring. ``model`` is left
    holding some interpolation: load the chosen one after.
    """
    options = config.wiseft
    if options.select_on == "fixed":
        return WiseFTChoice(select_on="fixed", alphas=[], values=[], best_alpha=options.fixed_alpha)
    metric = config.metric if options.select_on == "ood_val" else config.model_selection_metric
    images = ImageBatches(load_split(data.manifest(options.select_on)), eval_transform(model.image_spec), settings)

    def score(state: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(state)
        model.prepare_for_eval()
        return metric_value(metric, predict_batches(model, images, batch_size=config.data.eval_batch_size, dist=dist))

    swept = sweep(zeroshot_state, finetuned_state, options.alphas, score)
    return WiseFTChoice(
        select_on=options.select_on, alphas=swept.alphas, values=swept.values, best_alpha=swept.best_alpha
    )


def finetune_fingerprint(
    config: AutoFTConfig, data: PreparedData, zeroshot_dir: Path, method: str, hparams: Hyperparams
) -> dict[str, str]:
    """What a fine-tuning run depends on, one hash per part, so a mismatch can be named."""

    def digest(payload: Any) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def file_digest(path: Path) -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]

    splits = {name: read_manifest(data.manifest(name)) for name in ("id_train", "id_val")}
    return {
        "method": method,
        "hparams": digest(hparams.to_dict()),
        "data": digest([data.model_dump(mode="json"), splits]),
        "zeroshot weights": file_digest(zeroshot_dir / WEIGHTS_FILE),
        "finetune settings": digest(
            [
                config.finetune.model_dump(mode="json"),
                config.finetune_seed,
                config.model_selection_metric,
                config.search.dcm_sign,
                config.model.train_token_embedding,
                early_stopping_patience(config, method),
            ]
        ),
    }


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def _model_eval(images: LabeledImages, preds: Predictions, num_classes: int, metric: str, wilds: bool) -> ModelEval:
    metrics = all_metrics(preds)
    if metric not in metrics:
        metrics[metric] = metric_value(metric, preds)
    value = metrics[metric]
    if wilds:
        # WILDS' own evaluator gives the headline number (its grouping, its F1 convention).
        from autoft.data.ds_wilds import wilds_official_metrics

        official = wilds_official_metrics(images, preds.labels, preds.predicted)
        metrics.update({f"wilds/{key}": number for key, number in official.items()})
        value = official.get(WILDS_METRIC_KEYS.get(metric, ""), value)
    return ModelEval(metrics=metrics, value=value, confusion=confusion(preds, num_classes).tolist())


def stage_evaluate(
    config: AutoFTConfig,
    data_dir: Path,
    eval_set: str,
    models: dict[str, Path],
    out_path: Path,
    wiseft_pairs: dict[str, tuple[Path, Path]] | None = None,
) -> EvalResult:
    """Evaluate saved models on one eval set; WiSE-FT pairs (zero-shot, fine-tuned) get a full alpha curve.

    The validation splits get no curve: the report plots ID test against the OOD tests, and the
    fine-tune step has already chosen alpha on ID-val, so a curve there would be pure cost.
    """
    started = time.perf_counter()
    device = resolve_device(config)
    if eval_set in VALIDATION_SPLITS:
        wiseft_pairs = {}
    data = PreparedData.load_from(data_dir)
    manifest_path = data.manifest(eval_set)
    manifest = read_manifest(manifest_path)
    images = load_split(manifest_path)
    check_readable(images, f"eval set {eval_set!r}")
    # ImageNet-R/-A project onto 200 classes (logit_indices); ObjectNet max-pools groups (logit_groups).
    logits_fn = logits_fn_from_manifest(manifest)

    # Decoded once per input spec and reused by every model and WiSE-FT alpha (~30 passes per split).
    settings = input_settings(config, device)
    sources: dict[ImageSpec, ImageBatches] = {}

    def run(model: CLIPClassifier) -> ModelEval:
        if logits_fn is None and images.class_names != model.class_names:
            raise DataError(
                f"eval set {eval_set!r} has {len(images.class_names)} classes but the model {model.num_classes}; "
                "give the split a logit projection (logit_indices / logit_groups) or use matching class names"
            )
        model.prepare_for_eval()
        if model.image_spec not in sources:
            sources[model.image_spec] = ImageBatches(images, eval_transform(model.image_spec), settings)
        preds = predict_batches(
            model, sources[model.image_spec], batch_size=config.data.eval_batch_size, logits_fn=logits_fn
        )
        return _model_eval(images, preds, len(images.class_names), config.metric, manifest["format"] == "wilds")

    results = {name: run(load_classifier(folder, device=device)) for name, folder in models.items()}
    curves: dict[str, dict[str, float]] = {}
    for name, (zs_folder, ft_folder) in (wiseft_pairs or {}).items():
        model = load_classifier(ft_folder, device=device)
        zs_state = load_state_dict_file(Path(zs_folder) / WEIGHTS_FILE)
        ft_state = load_state_dict_file(Path(ft_folder) / WEIGHTS_FILE)
        curves[name] = {}
        for alpha in config.wiseft.alphas:
            model.load_state_dict(interpolate(zs_state, ft_state, alpha))
            curves[name][f"{alpha:.2f}"] = run(model).value
    evaluation = EvalResult(
        eval_set=eval_set,
        metric=config.metric,
        models=results,
        wiseft_curves=curves,
        seconds=round(time.perf_counter() - started, 3),
    )
    evaluation.save(out_path)
    return evaluation
