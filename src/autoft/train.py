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
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR
from tqdm.auto import tqdm

from autoft.atomic import atomic_write_text
from autoft.config import FinetuneConfig
from autoft.data.images import LabeledImages
from autoft.data.loaders import (
    DEFAULT_MEMORY_BUDGET_MB,
    Batch,
    BatchStream,
    ImageBatches,
    InputSettings,
    epoch_batches,
    share,
)
from autoft.data.transforms import ImageTransform
from autoft.distributed import SINGLE, Dist
from autoft.errors import CheckpointError, ConfigError, NonFiniteLossError
from autoft.evaluate import autocast_context, metric_value, predict_batches
from autoft.hparams import Hyperparams
from autoft.losses import LossBatch, ParameterAnchor, WeightedObjective
from autoft.models.checkpoint import load_state_dict_file, save_state_dict, save_torch_state
from autoft.models.classifier import CLIPClassifier
from autoft.observers import TrainingObserver

ADAM_BETAS = (0.9, 0.999)
FINITE_CHECK_EVERY = 50  # optimizer steps between host reads of the non-finite flag in the final run


def _means(values: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    return {name: float(torch.stack(items).float().mean()) for name, items in values.items()}


def make_adamw(params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float) -> AdamW:
    """AdamW (0.9, 0.999) with the fused kernel: the same update in one pass over all tensors instead of
    several per tensor (on CPU 5x faster for the image tower, 8x with the text tower; bench/engine.py)."""
    return AdamW(params, lr=lr, weight_decay=weight_decay, betas=ADAM_BETAS, fused=True)


class TrainingForward(nn.Module):
    """A training step's whole forward in one module call: logits and image features, and for ``flyp``
    the caption features and the logit scale. One call, so DDP sees every parameter a step uses."""

    def __init__(self, model: CLIPClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, caption_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        logits, features = self.model.forward_features(images)
        if caption_tokens is None:
            return logits, features, None, None
        captions = F.normalize(self.model.clip.encode_text(caption_tokens), dim=-1)
        return logits, features, captions, self.model.logit_scale


class ObjectiveStep:
    """Forward pass + weighted objective on one batch; shared by the inner loop and the final run.

    ``forward`` is the module the batch goes through (a DDP wrapper of :class:`TrainingForward` with
    several processes); ``dist`` gathers the features the batch-level ``flyp`` term needs from all ranks.
    """

    def __init__(
        self,
        model: CLIPClassifier,
        objective: WeightedObjective,
        params: Sequence[torch.nn.Parameter],
        anchor: ParameterAnchor | None,
        device: torch.device,
        caption_seed: int = 0,
        forward: nn.Module | None = None,
        dist: Dist = SINGLE,
    ) -> None:
        self.model = model
        self.objective = objective
        self.params = list(params)
        self.anchor = anchor
        self.device = device
        self.forward = forward if forward is not None else TrainingForward(model)
        self.dist = dist
        self.caption_generator = torch.Generator().manual_seed(caption_seed)

    def draw_templates(self, count: int) -> torch.Tensor:
        """A random template index per example (FLYP's captions), from the step's own generator."""
        return torch.randint(len(self.model.templates), (count,), generator=self.caption_generator)

    def loss(
        self, images: torch.Tensor, labels: torch.Tensor, templates: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on a batch; ``templates`` (caption template per example) are drawn when not given."""
        images = images.to(self.device, non_blocking=True)
        labels_dev = labels.to(self.device, non_blocking=True)
        tokens = None
        if self.objective.needs_captions:
            templates = self.draw_templates(len(labels)) if templates is None else templates
            tokens = self.model.caption_tokens(labels, templates)
        with autocast_context(self.device):
            logits, features, captions, logit_scale = self.forward(images, tokens)
            batch = LossBatch(logits=logits.float(), labels=labels_dev)
            if captions is not None and logit_scale is not None:
                batch.image_features = self.dist.gather_rows(features.float())
                batch.caption_features = self.dist.gather_rows(captions.float())
                batch.logit_scale = logit_scale.float()
        return self.objective(batch, self.params, self.anchor)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of the data terms (a loss of parameter terms alone has no graph in closed-form mode)."""
        if loss.requires_grad:
            loss.backward()

    def add_parameter_gradients(self) -> None:
        """The parameter terms' closed-form gradients, once per optimizer step, after its backward(s) and
        before clipping: they depend on the weights alone, which do not change between micro-batches."""
        self.objective.add_parameter_gradients(self.params, self.anchor)


def check_finite(losses: Sequence[torch.Tensor], start: int = 0) -> None:
    """Raise for the first non-finite loss among ``losses[start:]``, with its step: one host read for all.

    Reading a GPU loss every step stalls the queue, so losses are kept as device scalars and checked at
    the end of a trial, before a pruning report, and every ``FINITE_CHECK_EVERY`` steps of the final run.
    """
    if len(losses) <= start:
        return
    values = torch.stack(list(losses[start:])).float()
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(f"loss is {float(values[first])} at step {start + first}")


def prepare_objective(
    model: CLIPClassifier,
    hparams: Hyperparams,
    dcm_sign: str,
    anchor_state: dict[str, torch.Tensor] | None = None,
    train_token_embedding: bool = True,
) -> tuple[WeightedObjective, list[torch.nn.Parameter], ParameterAnchor | None]:
    """Build the objective, choose trainable parameters and the theta0 anchor.

    ``anchor_state`` is a state dict that is NOT the model's own tensors (a cached clone of the
    zero-shot weights); without it the anchor clones the current parameters.
    """
    # Closed-form parameter-term gradients (ObjectiveStep.add_parameter_gradients): the same update as
    # autograd's, without four norm graphs over every trainable tensor (docs/performance.md).
    objective = WeightedObjective(hparams.weights, dcm_sign, parameter_gradients="closed_form")
    model.set_trainable(train_text=objective.needs_captions, train_token_embedding=train_token_embedding)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    anchor = None
    if objective.needs_anchor:
        if anchor_state is not None:
            anchor = ParameterAnchor.from_clones([anchor_state[name].to(p.device) for name, p in named], params)
        else:
            anchor = ParameterAnchor(params)
    return objective, params, anchor


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
    train_token_embedding: bool = True,
) -> AdamW:
    """Reset to the zero-shot weights and take ``steps`` AdamW steps with the trial's phi.

    ``zeroshot_state`` is a cached clone, loaded in place: no deep copy of the model per trial. A
    non-finite loss fails the trial when the loop ends (or before ``on_step`` reports). Returns the
    optimizer (tests read its lr to prove the trial's own lr was used).
    """
    model.load_state_dict(zeroshot_state)
    model.train()
    objective, params, anchor = prepare_objective(
        model, hparams, dcm_sign, anchor_state=zeroshot_state, train_token_embedding=train_token_embedding
    )
    optimizer = make_adamw(params, hparams.lr, hparams.weight_decay)
    step_fn = ObjectiveStep(model, objective, params, anchor, device, caption_seed=hparams.seed or 0)
    losses: list[torch.Tensor] = []
    for step in range(steps):
        images, labels, _ = stream.next()
        loss, _ = step_fn.loss(images, labels)
        losses.append(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        step_fn.backward(loss)
        step_fn.add_parameter_gradients()
        optimizer.step()
        if on_step is not None:
            check_finite(losses, step)
            on_step(step + 1)
    check_finite(losses)
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
    stopped_early: bool = False  # ended before config.epochs: ``patience`` epochs without a new best ID-val


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
    try:
        save_state_dict(model.state_dict(), staging / MODEL_WEIGHTS)
        save_torch_state(payload, staging / TRAIN_STATE)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a full disk: free what the failed write took; keep the last
        raise
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


class FinetuneLoop:
    """The final run's optimizer steps: objective, AdamW, warmup + cosine, accumulation and clipping.

    One instance per run; :meth:`run_epoch` trains on one epoch's batches (what ``bench/engine.py``
    times as "the final fine-tuning path"). With several processes the forward goes through DDP and
    gradients are synchronised on the last micro-batch of each optimizer step only.
    """

    def __init__(
        self,
        model: CLIPClassifier,
        hparams: Hyperparams,
        config: FinetuneConfig,
        total_steps: int,
        *,
        device: torch.device,
        dcm_sign: str = "reference",
        dist: Dist = SINGLE,
        train_token_embedding: bool = True,
    ) -> None:
        self.config = config
        self.device = device
        self.dist = dist
        self.micro_batch = config.batch_size // config.grad_accum
        if self.micro_batch % dist.world_size:
            raise ConfigError(
                f"finetune.batch_size / grad_accum = {self.micro_batch} examples per micro-batch do not split over "
                f"{dist.world_size} processes; use a multiple of {dist.world_size}"
            )
        self.peak_lr = config.lr if config.lr is not None else hparams.lr
        zeroshot_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        self.objective, self.params, anchor = prepare_objective(
            model, hparams, dcm_sign, anchor_state=zeroshot_state, train_token_embedding=train_token_embedding
        )
        del zeroshot_state  # the anchor holds clones of the trainable tensors it needs
        self.forward = dist.wrap(TrainingForward(model), device)
        self.optimizer = make_adamw(self.params, self.peak_lr, hparams.weight_decay)
        self.scheduler = warmup_cosine(self.optimizer, config.warmup_steps, total_steps)
        self.step_fn = ObjectiveStep(
            model,
            self.objective,
            self.params,
            anchor,
            device,
            caption_seed=config.seed,
            forward=self.forward,
            dist=dist,
        )

    def run_epoch(
        self,
        batches: Iterable[Batch],
        micro_steps: int,
        on_step: Callable[[int, Callable[[], dict[str, float]], float], object] | None = None,
    ) -> tuple[float, dict[str, float]]:
        """Train on up to ``micro_steps`` micro-batches; returns the mean loss and mean terms (all ranks).

        ``on_step(step, values, lr)`` follows each optimizer step: its number in the epoch (from 1), a function
        returning its loss and terms averaged over its micro-batches (this rank's; calling it reads them from
        the device), and the lr the step used.
        """
        accum = self.config.grad_accum
        rank_share = share(self.micro_batch, self.dist.rank, self.dist.world_size)
        losses: list[torch.Tensor] = []
        terms_seen: dict[str, list[torch.Tensor]] = {}
        checked = 0
        for micro, batch in enumerate(batches):
            if micro >= micro_steps:
                break
            templates = None
            if self.objective.needs_captions:  # drawn for the global micro-batch: the same on every rank
                templates = self.step_fn.draw_templates(self.micro_batch)[rank_share]
            steps_now = (micro + 1) % accum == 0
            with self.forward.no_sync() if self.dist.active and not steps_now else nullcontext():  # type: ignore[operator]
                loss, terms = self.step_fn.loss(batch.images, batch.labels, templates)
                if micro % accum == 0:
                    # Freed between the forward and the backward that allocates them again: the allocator
                    # reuses the same blocks (freed right after the step, they cost page faults: ~15 % of a
                    # nine-term step on CPU, bench/engine.py).
                    self.optimizer.zero_grad(set_to_none=True)
                self.step_fn.backward(loss / accum)
            losses.append(loss.detach())
            for name, value in terms.items():
                terms_seen.setdefault(name, []).append(value)
            if steps_now:
                self.step_fn.add_parameter_gradients()
                torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
                lr = float(self.optimizer.param_groups[0]["lr"])
                self.optimizer.step()
                self.scheduler.step()
                step = (micro + 1) // accum
                if on_step is not None:
                    recent = {"loss": losses[-accum:], **{name: seen[-accum:] for name, seen in terms_seen.items()}}
                    on_step(step, lambda recent=recent: _means(recent), lr)
                if step % FINITE_CHECK_EVERY == 0:
                    check_finite(losses, checked)
                    checked = len(losses)
        check_finite(losses, checked)
        count = max(len(losses), 1)

        def mean(values: list[torch.Tensor]) -> float:
            return float(self.dist.mean(torch.stack(values).sum())) / count

        return (mean(losses) if losses else 0.0), {name: mean(values) for name, values in terms_seen.items()}

    def state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "caption_rng": self.step_fn.caption_generator.get_state(),
        }

    def load_state(self, payload: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.step_fn.caption_generator.set_state(payload["caption_rng"])


def finetune(
    model: CLIPClassifier,
    hparams: Hyperparams,
    train_images: LabeledImages,
    id_val_images: LabeledImages,
    config: FinetuneConfig,
    *,
    train_transform: ImageTransform,
    eval_transform: ImageTransform,
    selection_metric: str,
    out_dir: Path,
    device: torch.device,
    dcm_sign: str = "reference",
    num_workers: int = 0,
    memory_budget_mb: int = DEFAULT_MEMORY_BUDGET_MB,
    eval_batch_size: int = 256,
    resume: bool = False,
    progress: bool = True,
    fingerprint: dict[str, str] | None = None,
    observer: TrainingObserver | None = None,
    patience: int = 0,
) -> FinetuneResult:
    """:func:`finetune_batches` on two splits (each batched once, in memory when it fits the budget)."""
    settings = InputSettings(device, memory_budget_mb, num_workers)
    return finetune_batches(
        model,
        hparams,
        ImageBatches(train_images, train_transform, settings),
        ImageBatches(id_val_images, eval_transform, settings),
        config,
        selection_metric=selection_metric,
        out_dir=out_dir,
        device=device,
        dcm_sign=dcm_sign,
        eval_batch_size=eval_batch_size,
        resume=resume,
        progress=progress,
        fingerprint=fingerprint,
        observer=observer,
        patience=patience,
    )


def patience_exhausted(last_epoch: int, best_epoch: int, patience: int) -> bool:
    """Early stopping on ID-val: ``patience`` epochs have passed since the best one (0 = never stop)."""
    return patience > 0 and last_epoch - best_epoch >= patience


def finetune_batches(
    model: CLIPClassifier,
    hparams: Hyperparams,
    train: ImageBatches,
    id_val: ImageBatches,
    config: FinetuneConfig,
    *,
    selection_metric: str,
    out_dir: Path,
    device: torch.device,
    dcm_sign: str = "reference",
    eval_batch_size: int = 256,
    resume: bool = False,
    progress: bool = True,
    fingerprint: dict[str, str] | None = None,
    observer: TrainingObserver | None = None,
    dist: Dist = SINGLE,
    train_token_embedding: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
    patience: int = 0,
) -> FinetuneResult:
    """Fine-tune ``model`` in place with ``hparams``; the best ID-val epoch's weights are saved.

    ``patience`` > 0 stops early once that many epochs passed without a new best ID-val (the schedule
    stays the one of ``config.epochs``, so a stopped run is the same run cut short, and resumes as such).

    ``on_checkpoint(epoch)`` runs on rank 0 once an epoch's checkpoint is complete in ``out_dir`` (the
    durable copy a retried step resumes from, :mod:`autoft.durable`).

    ``fingerprint`` names what the run depends on (method, hyperparameters, data, starting weights,
    settings); each checkpoint records it, and ``resume`` refuses a checkpoint of any other run.
    ``observer`` hears each optimizer step and each epoch (loss, terms, lr, ID-val) for tracking. With
    several processes (``dist``) every rank trains on its share of each batch and evaluates its chunk
    of ID-val; rank 0 alone writes checkpoints and weights.
    """
    if train.class_names != model.class_names:
        raise ValueError(
            f"class mismatch: the head has {model.num_classes} classes, the training data "
            f"{len(train.class_names)}; build the zero-shot model from the same dataset"
        )
    steps_per_epoch = len(train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"training split has {len(train)} examples, fewer than one batch of {config.batch_size}; "
            "lower finetune.batch_size"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loop = FinetuneLoop(
        model,
        hparams,
        config,
        steps_per_epoch * config.epochs,
        device=device,
        dcm_sign=dcm_sign,
        dist=dist,
        train_token_embedding=train_token_embedding,
    )

    checkpoint = out_dir / CHECKPOINT_DIR
    history: list[EpochRecord] = []
    start_epoch, best_epoch, best_value = 0, -1, -math.inf
    if resume and (checkpoint.is_dir() or checkpoint.with_name(checkpoint.name + ".old").is_dir()):
        weights, payload = _load_checkpoint(checkpoint)
        check_fingerprint(json.loads(payload.get("fingerprint", "{}")), fingerprint or {}, checkpoint)
        model.load_state_dict(weights)
        loop.load_state(payload)
        _set_rng_state(payload["rng"])
        start_epoch = int(payload["epoch"]) + 1
        best_epoch, best_value = int(payload["best_epoch"]), float(payload["best_value"])
        history = [EpochRecord(**json.loads(item)) for item in payload["history"]]

    show = progress and dist.is_main
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        if patience_exhausted(epoch - 1, best_epoch, patience):
            stopped_early = True
            if show:
                tqdm.write(f"early stop after epoch {epoch}: no better ID-val for {patience} epochs")
            break
        # The order is a function of (seed, epoch), so a resumed epoch (and every rank) sees the same batches.
        batches = epoch_batches(
            train,
            loop.micro_batch,
            seed=config.seed * 100_003 + epoch,
            rank=dist.rank,
            world_size=dist.world_size,
        )
        bar = tqdm(total=steps_per_epoch, desc=f"finetune epoch {epoch + 1}/{config.epochs}", disable=not show)

        def after_step(
            step: int, values: Callable[[], dict[str, float]], lr: float, epoch: int = epoch, bar: tqdm = bar
        ) -> None:
            bar.update(1)
            if observer is not None:
                observer.on_step(epoch * steps_per_epoch + step, {**values(), "lr": lr})

        train_loss, terms = loop.run_epoch(batches, steps_per_epoch * config.grad_accum, on_step=after_step)
        bar.close()
        model.prepare_for_eval()
        id_val_value = metric_value(
            selection_metric, predict_batches(model, id_val, batch_size=eval_batch_size, dist=dist)
        )
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            id_val=id_val_value,
            lr=float(loop.optimizer.param_groups[0]["lr"]),
            terms=terms,
        )
        history.append(record)
        if observer is not None:
            observer.on_epoch(epoch, {"train_loss": train_loss, "id_val": id_val_value, "lr": record.lr, **terms})
        improved = id_val_value > best_value
        if improved:
            best_epoch, best_value = epoch, id_val_value
        if dist.is_main:
            if improved:
                save_state_dict(model.state_dict(), out_dir / BEST_WEIGHTS)
            if show:
                tqdm.write(f"epoch {epoch + 1}: loss {train_loss:.4f}  id_val {selection_metric} {id_val_value:.4f}")
            _save_checkpoint(
                checkpoint,
                model,
                {
                    **loop.state(),
                    "rng": _rng_state(),
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "best_value": best_value,
                    "history": [json.dumps(asdict(item)) for item in history],
                    "fingerprint": json.dumps(fingerprint or {}, sort_keys=True),
                },
            )
            atomic_write_text(out_dir / "history.json", json.dumps([asdict(item) for item in history], indent=1))
            if on_checkpoint is not None:
                on_checkpoint(epoch)
        dist.barrier()  # every rank leaves the epoch once its checkpoint is complete

    return FinetuneResult(
        best_epoch=best_epoch,
        best_value=best_value,
        history=history,
        best_state_path=out_dir / BEST_WEIGHTS,
        peak_lr=loop.peak_lr,
        stopped_early=stopped_early,
    )
