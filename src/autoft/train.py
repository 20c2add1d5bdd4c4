"""Fine-tuning with a weighted objective: the search's inner loop and the final run share this code.

Final fine-tuning follows docs/method.md: AdamW (0.9, 0.999), linear warmup into a cosine schedule whose
PEAK is the searched learning rate, gradient accumulation, clipping at ``grad_clip``, bf16 autocast
on GPU, ID-val evaluation each epoch with best-epoch selection, and a checkpoint each epoch (model,
optimizer, scheduler, RNG) so that a killed run resumes to the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from tqdm.auto import tqdm

from autoft.atomic import atomic_path, atomic_write_text
from autoft.config import FinetuneConfig
from autoft.data.images import LabeledImages, TransformedImages
from autoft.data.loaders import BatchStream, make_loader
from autoft.errors import CheckpointError, NonFiniteLossError
from autoft.evaluate import autocast_context, metric_value, predict
from autoft.hparams import Hyperparams
from autoft.losses import LossBatch, ParameterAnchor, WeightedObjective
from autoft.models.checkpoint import load_state_dict_file, save_state_dict
from autoft.models.classifier import CLIPClassifier, fill_template
from autoft.observers import TrainingObserver

ADAM_BETAS = (0.9, 0.999)


def random_captions(
    labels: torch.Tensor, class_names: Sequence[str], templates: Sequence[str], generator: torch.Generator
) -> list[str]:
    """One caption per example: a random template filled with its class name (FLYP)."""
    picks = torch.randint(len(templates), (len(labels),), generator=generator).tolist()
    return [fill_template(templates[t], class_names[int(y)]) for t, y in zip(picks, labels.tolist(), strict=True)]


class ObjectiveStep:
    """Forward pass + weighted objective on one batch; shared by the inner loop and the final run."""

    def __init__(
        self,
        model: CLIPClassifier,
        objective: WeightedObjective,
        params: Sequence[torch.nn.Parameter],
        anchor: ParameterAnchor | None,
        device: torch.device,
        caption_seed: int = 0,
    ) -> None:
        self.model = model
        self.objective = objective
        self.params = list(params)
        self.anchor = anchor
        self.device = device
        self.caption_generator = torch.Generator().manual_seed(caption_seed)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = images.to(self.device, non_blocking=True)
        labels_dev = labels.to(self.device, non_blocking=True)
        with autocast_context(self.device):
            logits, image_features = self.model.forward_features(images)
            batch = LossBatch(logits=logits.float(), labels=labels_dev)
            if self.objective.needs_captions:
                captions = random_captions(labels, self.model.class_names, self.model.templates, self.caption_generator)
                batch.image_features = image_features.float()
                batch.caption_features = self.model.encode_texts(captions).float()
                batch.logit_scale = self.model.logit_scale.float()
        return self.objective(batch, self.params, self.anchor)


def prepare_objective(
    model: CLIPClassifier, hparams: Hyperparams, dcm_sign: str, anchor_state: dict[str, torch.Tensor] | None = None
) -> tuple[WeightedObjective, list[torch.nn.Parameter], ParameterAnchor | None]:
    """Build the objective, choose trainable parameters and the theta0 anchor.

    ``anchor_state`` is a state dict that is NOT the model's own tensors (a cached clone of the
    zero-shot weights); without it the anchor clones the current parameters.
    """
    objective = WeightedObjective(hparams.weights, dcm_sign)
    model.set_trainable(train_text=objective.needs_captions)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    anchor = None
    if objective.needs_anchor:
        if anchor_state is not None:
            anchor = ParameterAnchor.from_clones([anchor_state[name].to(p.device) for name, p in named], params)
        else:
            anchor = ParameterAnchor(params)
    return objective, params, anchor


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"loss is {float(loss.detach())} at step {step}")


def inner_loop(
    model: CLIPClassifier,
    zeroshot_state: dict[str, torch.Tensor],
    hparams: Hyperparams,
    stream: BatchStream,
    steps: int,
    *,
    device: torch.device,
    dcm_sign: str = "reference",
    on_step: Callable[[int], None] | None = None,
) -> AdamW:
    """Reset to the zero-shot weights and take ``steps`` AdamW steps with the trial's phi.

    ``zeroshot_state`` is a cached clone, loaded in place: no deep copy of the model per trial.
    Returns the optimizer (tests read its lr to prove the trial's own lr was used).
    """
    model.load_state_dict(zeroshot_state)
    model.train()
    objective, params, anchor = prepare_objective(model, hparams, dcm_sign, anchor_state=zeroshot_state)
    optimizer = AdamW(params, lr=hparams.lr, weight_decay=hparams.weight_decay, betas=ADAM_BETAS)
    step_fn = ObjectiveStep(model, objective, params, anchor, device, caption_seed=hparams.seed or 0)
    for step in range(steps):
        images, labels, _ = stream.next()
        loss, _ = step_fn.loss(images, labels)
        check_finite(loss, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(step + 1)
    return optimizer


# ----------------------------------------------------------------------------------------------
# Final fine-tuning
# ----------------------------------------------------------------------------------------------


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> LRScheduler:
    """Linear warmup to the optimizer's lr (the peak), then cosine decay to 0 (torch schedulers)."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    cosine = CosineAnnealingLR(optimizer, T_max=max(total_steps - warmup_steps, 1))
    if warmup_steps == 0:
        return cosine
    warmup = LinearLR(optimizer, start_factor=1.0 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    id_val: float
    lr: float
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    best_epoch: int
    best_value: float
    history: list[EpochRecord]
    best_state_path: Path
    peak_lr: float


CHECKPOINT_DIR = "checkpoint"
TRAIN_STATE = "train_state.pt"
MODEL_WEIGHTS = "model.safetensors"
BEST_WEIGHTS = "best.safetensors"


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(folder: Path, model: torch.nn.Module, payload: dict[str, Any]) -> None:
    """Weights and train state written to a fresh folder, then swapped in: never half a checkpoint."""
    staging = folder.with_name(folder.name + ".new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_state_dict(model.state_dict(), staging / MODEL_WEIGHTS)
    with atomic_path(staging / TRAIN_STATE) as tmp:
        torch.save(payload, tmp)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    if not (folder / TRAIN_STATE).is_file() and folder.with_name(folder.name + ".old").is_dir():
        folder = folder.with_name(folder.name + ".old")  # killed between the two renames
    weights = load_state_dict_file(folder / MODEL_WEIGHTS)
    payload = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=True)
    return weights, payload


def check_fingerprint(recorded: dict[str, str], current: dict[str, str], where: Path) -> None:
    """A checkpoint may only continue the run that wrote it; the error names what differs."""
    differs = sorted(key for key in set(recorded) | set(current) if recorded.get(key) != current.get(key))
    if differs:
        raise CheckpointError(
            f"{where} was written by a different fine-tuning run ({', '.join(differs)} differ); resuming it would "
            "mix two runs' states. Use another output folder, or delete it to start over"
        )


def finetune(
    model: CLIPClassifier,
    hparams: Hyperparams,
    train_images: LabeledImages,
    id_val_images: LabeledImages,
    config: FinetuneConfig,
    *,
    train_transform: Callable,
    eval_transform: Callable,
    selection_metric: str,
    out_dir: Path,
    device: torch.device,
    dcm_sign: str = "reference",
    num_workers: int = 0,
    eval_batch_size: int = 256,
    resume: bool = False,
    progress: bool = True,
    fingerprint: dict[str, str] | None = None,
    observer: TrainingObserver | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place with ``hparams``; the best ID-val epoch's weights are saved.

    ``fingerprint`` names what the run depends on (method, hyperparameters, data, starting weights,
    settings); each checkpoint records it, and ``resume`` refuses a checkpoint of any other run.
    ``observer`` hears each optimizer step and each epoch (loss, terms, lr, ID-val) for tracking.
    """
    if train_images.class_names != model.class_names:
        raise ValueError(
            f"class mismatch: the head has {model.num_classes} classes, the training data "
            f"{len(train_images.class_names)}; build the zero-shot model from the same dataset"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    peak_lr = config.lr if config.lr is not None else hparams.lr
    micro_batch = config.batch_size // config.grad_accum
    dataset = TransformedImages(train_images, train_transform)
    steps_per_epoch = len(dataset) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"training split has {len(dataset)} examples, fewer than one batch of {config.batch_size}; "
            "lower finetune.batch_size"
        )
    total_steps = steps_per_epoch * config.epochs

    zeroshot_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    objective, params, anchor = prepare_objective(model, hparams, dcm_sign, anchor_state=zeroshot_state)
    del zeroshot_state  # the anchor holds clones of the trainable tensors it needs
    optimizer = AdamW(params, lr=peak_lr, weight_decay=hparams.weight_decay, betas=ADAM_BETAS)
    scheduler = warmup_cosine(optimizer, config.warmup_steps, total_steps)
    step_fn = ObjectiveStep(model, objective, params, anchor, device, caption_seed=config.seed)

    checkpoint = out_dir / CHECKPOINT_DIR
    history: list[EpochRecord] = []
    start_epoch, best_epoch, best_value = 0, -1, -math.inf
    if resume and (checkpoint.is_dir() or checkpoint.with_name(checkpoint.name + ".old").is_dir()):
        weights, payload = _load_checkpoint(checkpoint)
        check_fingerprint(json.loads(payload.get("fingerprint", "{}")), fingerprint or {}, checkpoint)
        model.load_state_dict(weights)
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
        step_fn.caption_generator.set_state(payload["caption_rng"])
        _set_rng_state(payload["rng"])
        start_epoch = int(payload["epoch"]) + 1
        best_epoch, best_value = int(payload["best_epoch"]), float(payload["best_value"])
        history = [EpochRecord(**json.loads(item)) for item in payload["history"]]

    for epoch in range(start_epoch, config.epochs):
        # The shuffle order is a function of (seed, epoch), so a resumed epoch sees the same batches.
        loader = make_loader(
            dataset,
            micro_batch,
            shuffle=True,
            seed=config.seed * 100_003 + epoch,
            num_workers=num_workers,
            device=device,
            drop_last=True,
        )
        micro_steps = steps_per_epoch * config.grad_accum
        running, seen = torch.zeros((), device=device), 0
        term_sums: dict[str, torch.Tensor] = {}
        bar = tqdm(total=steps_per_epoch, desc=f"finetune epoch {epoch + 1}/{config.epochs}", disable=not progress)
        optimizer.zero_grad(set_to_none=True)
        step_values: dict[str, torch.Tensor] = {}
        for micro, (images, labels, _) in enumerate(loader):
            if micro >= micro_steps:
                break
            loss, terms = step_fn.loss(images, labels)
            check_finite(loss, micro)
            (loss / config.grad_accum).backward()
            running += loss.detach()
            seen += 1
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0) + value
            if observer is not None:
                for name, value in {"loss": loss.detach(), **terms}.items():
                    step_values[name] = step_values.get(name, 0) + value / config.grad_accum
            if (micro + 1) % config.grad_accum == 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
                lr = float(optimizer.param_groups[0]["lr"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                if observer is not None:
                    step = epoch * steps_per_epoch + (micro + 1) // config.grad_accum
                    observer.on_step(step, {**{k: float(v) for k, v in step_values.items()}, "lr": lr})
                    step_values = {}
        bar.close()
        model.prepare_for_eval()
        id_val = metric_value(
            selection_metric,
            predict(
                model, id_val_images, eval_transform, batch_size=eval_batch_size, device=device, num_workers=num_workers
            ),
        )
        record = EpochRecord(
            epoch=epoch,
            train_loss=float(running) / max(seen, 1),
            id_val=id_val,
            lr=float(optimizer.param_groups[0]["lr"]),
            terms={name: float(total) / max(seen, 1) for name, total in term_sums.items()},
        )
        history.append(record)
        if observer is not None:
            observer.on_epoch(
                epoch, {"train_loss": record.train_loss, "id_val": id_val, "lr": record.lr, **record.terms}
            )
        if id_val > best_value:
            best_epoch, best_value = epoch, id_val
            save_state_dict(model.state_dict(), out_dir / BEST_WEIGHTS)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {record.train_loss:.4f}  id_val {selection_metric} {id_val:.4f}")
        _save_checkpoint(
            checkpoint,
            model,
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "caption_rng": step_fn.caption_generator.get_state(),
                "rng": _rng_state(),
                "epoch": epoch,
                "best_epoch": best_epoch,
                "best_value": best_value,
                "history": [json.dumps(asdict(item)) for item in history],
                "fingerprint": json.dumps(fingerprint or {}, sort_keys=True),
            },
        )
        atomic_write_text(out_dir / "history.json", json.dumps([asdict(item) for item in history], indent=1))

    return FinetuneResult(
        best_epoch=best_epoch,
        best_value=best_value,
        history=history,
        best_state_path=out_dir / BEST_WEIGHTS,
        peak_lr=peak_lr,
    )
