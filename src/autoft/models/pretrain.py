"""A small CLIP "foundation model" for the built-in digits benchmark, pretrained here on one CPU core.

No hub is reachable, and AutoFT needs a zero-shot model that is robust in a broad, shallow way, the
way web-scale CLIP is: good on many renderings, not perfect on any, and more robust than a model
trained on the benchmark's ID data alone would be at the same ID accuracy. So the recipe imitates
web data (issue 16 measured the regime this puts the benchmark in: ``docs/results/regime.md``):

* Images: half of each batch from the fixed handwritten ``pretrain_pool`` of ``ds_digits`` (the same
  rows for every run seed, excluded from every seed's splits), half from 20,000 PRINTED digits rendered
  from the TrueType fonts inside matplotlib (``autoft.data.fonts``: 22 typefaces, random weight,
  slant, rotation, size, position, some through a low-resolution round trip). Each view then goes
  through up to three random shift stages (stroke/geometry, appearance, degradation) over ALL
  families of ``autoft.data.shifts`` at random severities, plus a small random translation.
* Captions ("alt-text"): each image gets ONE fixed caption kind, drawn once from the seed: the class
  as a word, the class as a numeral, no class at all, or (a small share) a WRONG class. Fixed, not
  redrawn per step, because that is what makes the noise matter: redrawn noise averages out, while
  too many fixed wrong captions get memorised. The class appears as a word (the form the zero-shot
  prompts use) in only 10% of captions and as a numeral in 50%, so the word-to-image alignment stays
  loose and zero-shot leaves room for fine-tuning. Printed digits get captions of their own that
  often name the typeface ("the digit 7 in DejaVu Serif."). A style word describing the step's
  rendering ("blurry", "bold", ...) is added at random, as alt-text often describes how an image looks.
* Objective: CLIP's symmetric InfoNCE with a learned temperature; AdamW with warmup + cosine.

The foundation model is ONE fixed asset per recipe: ``PretrainRecipe.pretrain_seed`` seeds it, never
the run seed. The default recipe (3,000 steps of 128 views) takes about 5 minutes on one core, so
its weights ship in the package (``weights/``, with a model card) and are used as they are;
``bench/build_foundation.py`` rebuilds them (bitwise: one thread, fixed summation order). Any
other recipe is built on first use and cached under a name that holds a hash of the recipe, so a
changed recipe never reuses stale weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from autoft.atomic import atomic_write_text
from autoft.data.ds_digits import (
    CLASS_NAMES,
    PRETRAIN_POOL_FRACTION,
    PRETRAIN_POOL_SEED,
    load_digit_images,
    pretraining_pool_indices,
)
from autoft.data.fonts import FONT_FILES, FontRenderSpec, render_font_digits
from autoft.data.shifts import NUM_SEVERITIES, SHIFTS, apply_shift
from autoft.models.checkpoint import save_state_dict
from autoft.models.factory import ClipBundle, create_clip

FOUNDATION_MODEL_NAME = "autoft-tiny-vit"
# Bump when the CODE of the recipe changes meaning in a way its fields do not show (e.g. a new
# augmentation step): the cache key includes it, so old weights are not reused.
RECIPE_VERSION = 2  # 2: pretrain_seed, the seed-independent pool, the printed-digit corpus
CACHE_SUBDIR = "foundation"
# Weights shipped inside the package, named like the cache's files: a recipe whose key matches is
# loaded from here and never rebuilt (the default recipe takes minutes on one core).
SHIPPED_DIR = Path(__file__).parent / "weights"

# Shift stages, applied in this order (strokes need the clean bright-on-dark rendering; degradations
# come last, as a camera or a compressor would add them). At most one family per stage.
STAGES: tuple[tuple[str, ...], ...] = (
    ("thick", "thin", "outline", "rotate", "shrink", "clutter"),
    ("invert", "colorize", "textured_background"),
    ("gaussian_blur", "pixelate", "jpeg", "gaussian_noise", "contrast"),
)
STYLE_WORDS: dict[str, tuple[str, ...]] = {
    "thick": ("bold", "thick"),
    "thin": ("thin", "faint"),
    "outline": ("outlined", "hollow"),
    "rotate": ("tilted", "rotated"),
    "shrink": ("small", "tiny"),
    "clutter": ("scribbled", "messy"),
    "invert": ("inverted", "negative"),
    "colorize": ("colorful", "colored"),
    "textured_background": ("patterned", "textured"),
    "contrast": ("faded", "washed out"),
    "gaussian_blur": ("blurry", "blurred"),
    "pixelate": ("pixelated", "blocky"),
    "jpeg": ("compressed", "jpeg"),
    "gaussian_noise": ("noisy", "grainy"),
}
CLASS_CAPTIONS = (
    "a {s} photo of the digit {c}.",
    "a {s} handwritten {c}.",
    "the number {c}, {s}.",
    "{s} digit {c}",
    "a drawing of a {s} {c}.",
    "{c}",
    "scan of a {s} {c}",
)
UNLABELED_CAPTIONS = (
    "a {s} handwritten digit.",
    "a {s} scanned number.",
    "an image of a {s} digit.",
    "{s} handwriting sample",
    "a {s} photo.",
)
# Printed (font-rendered) digits get alt-text of their own: they are signs, prints and type samples.
PRINTED_CLASS_CAPTIONS = (
    "the digit {c} in {f}.",
    "a printed {c}.",
    "{c} set in {f}, {s}.",
    "a {s} {f} {c}",
    "the number {c}.",
    "{c}",
    "a {s} sign showing {c}.",
)
PRINTED_UNLABELED_CAPTIONS = (
    "a {s} glyph from {f}.",
    "{f} font specimen",
    "a {s} printed character.",
    "typography sample, {s}",
)
NUMERALS = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class PretrainRecipe:
    """Every knob of the pretraining; its hash names the cached weights."""

    model_name: str = FOUNDATION_MODEL_NAME
    # The seed of the build, independent of any run seed: one recipe is one fixed foundation model.
    pretrain_seed: int = 0
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 150
    # Caption kinds, fixed per pool image: word / numeral / none / wrong class (the rest: word).
    share_numeral: float = 0.5
    share_no_class: float = 0.35
    share_wrong_class: float = 0.05
    style_word_prob: float = 0.5
    stage_prob: float = 0.4  # chance each shift stage applies (all three skipped: ~22% clean views)
    max_translate: int = 2
    stages: tuple[tuple[str, ...], ...] = STAGES
    class_captions: tuple[str, ...] = CLASS_CAPTIONS
    unlabeled_captions: tuple[str, ...] = UNLABELED_CAPTIONS
    style_words: tuple[tuple[str, tuple[str, ...]], ...] = tuple(STYLE_WORDS.items())
    # The printed-digit corpus (``autoft.data.fonts``): how many renders, and their share of each batch.
    printed_images: int = 20_000
    printed_share: float = 0.5
    printed_render: FontRenderSpec = field(default_factory=FontRenderSpec)
    printed_fonts: tuple[str, ...] = FONT_FILES
    printed_class_captions: tuple[str, ...] = PRINTED_CLASS_CAPTIONS
    printed_unlabeled_captions: tuple[str, ...] = PRINTED_UNLABELED_CAPTIONS

    def __post_init__(self) -> None:
        shares = (self.share_numeral, self.share_no_class, self.share_wrong_class)
        if any(not 0 <= s <= 1 for s in shares) or sum(shares) > 1:
            raise ValueError(f"caption shares must be in [0, 1] and sum to at most 1, got {shares}")
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"need steps >= 1 and batch_size >= 2 (contrastive), got {self.steps}, {self.batch_size}")
        if isinstance(self.pretrain_seed, bool) or not isinstance(self.pretrain_seed, int) or self.pretrain_seed < 0:
            raise ValueError(f"pretrain_seed must be a non-negative integer, got {self.pretrain_seed!r}")
        if not 0 <= self.printed_share <= 1 or (self.printed_share > 0) != (self.printed_images > 0):
            raise ValueError(
                f"printed_share must be in [0, 1] and > 0 exactly when printed_images > 0, got "
                f"{self.printed_share} with {self.printed_images} images"
            )
        unknown = [name for stage in self.stages for name in stage if name not in SHIFTS]
        if unknown:
            raise ValueError(f"unknown shift families in the recipe stages: {unknown}")

    def key(self) -> str:
        """Hash of the recipe, the shift levels it samples and the pool it reads (cache key)."""
        payload = {
            "recipe": asdict(self),
            "version": RECIPE_VERSION,
            "pool_fraction": PRETRAIN_POOL_FRACTION,
            "pool_seed": PRETRAIN_POOL_SEED,
            "levels": {name: SHIFTS[name].levels for stage in self.stages for name in stage},
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


DEFAULT_RECIPE = PretrainRecipe()


# ----------------------------------------------------------------------------------------------
# Web-like data: augmented views and imperfect captions
# ----------------------------------------------------------------------------------------------


@dataclass
class PretrainCorpus:
    """The pretraining images: the fixed handwritten pool, then (optionally) the printed digits.

    ``families`` holds each printed image's font family and "" for handwritten ones; it both marks
    the source (for the caption templates) and fills the ``{f}`` slot of printed captions.
    """

    images: np.ndarray
    labels: np.ndarray
    families: list[str]

    @property
    def printed(self) -> np.ndarray:
        return np.array([bool(f) for f in self.families])

    @classmethod
    def build(cls, recipe: PretrainRecipe) -> PretrainCorpus:
        images, labels = load_digit_images()
        pool = pretraining_pool_indices()
        parts_images, parts_labels, families = [images[pool]], [labels[pool]], [""] * len(pool)
        if recipe.printed_images:
            printed = render_font_digits(
                recipe.printed_images, recipe.pretrain_seed, recipe.printed_render, recipe.printed_fonts
            )
            parts_images.append(printed.images)
            parts_labels.append(printed.labels)
            families += printed.families
        return cls(images=np.concatenate(parts_images), labels=np.concatenate(parts_labels), families=families)


@dataclass
class CaptionPlan:
    """The fixed caption kind of each pretraining image (drawn once, like an image's alt-text)."""

    kinds: np.ndarray  # 0 word, 1 numeral, 2 no class, 3 wrong class
    named_class: np.ndarray  # the class the caption names (== label except for wrong captions)
    template: np.ndarray  # uniform in [0, 1): picks from the class or unlabeled captions of the image's source
    families: list[str] | None = None  # font family per image ("" or None: handwritten)

    WORD, NUMERAL, NO_CLASS, WRONG = 0, 1, 2, 3

    @classmethod
    def draw(
        cls,
        labels: np.ndarray,
        recipe: PretrainRecipe,
        rng: np.random.Generator,
        families: list[str] | None = None,
    ) -> CaptionPlan:
        n = len(labels)
        p_word = 1 - recipe.share_numeral - recipe.share_no_class - recipe.share_wrong_class
        kinds = rng.choice(4, size=n, p=[p_word, recipe.share_numeral, recipe.share_no_class, recipe.share_wrong_class])
        wrong = (labels + rng.integers(1, len(CLASS_NAMES), size=n)) % len(CLASS_NAMES)
        named = np.where(kinds == cls.WRONG, wrong, labels)
        # Uniform in [0, 1), scaled to the length of whichever list the image's source uses.
        templates = rng.random(n)
        return cls(kinds=kinds, named_class=named, template=templates, families=families)

    def caption(self, index: int, style: str, recipe: PretrainRecipe) -> str:
        kind = self.kinds[index]
        family = self.families[index] if self.families else ""
        if kind == self.NO_CLASS:
            options = recipe.printed_unlabeled_captions if family else recipe.unlabeled_captions
        else:
            options = recipe.printed_class_captions if family else recipe.class_captions
        text = options[int(self.template[index] * len(options))]
        if kind != self.NO_CLASS:
            name = NUMERALS if kind == self.NUMERAL else CLASS_NAMES
            text = text.replace("{c}", name[self.named_class[index]])
        return _tidy(text.replace("{f}", family).replace("{s}", style))


def _tidy(text: str) -> str:
    """Remove the spaces and dangling commas an empty style slot leaves ("the number two, ." -> "the number two.")."""
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,\s*(?=[.]|$)", "", text)
    return re.sub(r"\s+([.,])", r"\1", text).strip()


def augment_batch(
    images: np.ndarray, recipe: PretrainRecipe, rng: np.random.Generator
) -> tuple[np.ndarray, list[list[str]]]:
    """Random views of uint8 images: translation, then up to one shift per stage at a random severity.

    Returns the views and, per image, the families applied (for the captions' style words).
    """
    n, height, width, _ = images.shape
    out = images.copy()
    if recipe.max_translate:
        pad = recipe.max_translate
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = rng.integers(0, 2 * pad + 1, size=(n, 2))
        for i, (dy, dx) in enumerate(offsets):
            out[i] = padded[i, dy : dy + height, dx : dx + width]
    applied: list[list[str]] = [[] for _ in range(n)]
    for stage in recipe.stages:
        active = rng.random(n) < recipe.stage_prob
        family = rng.integers(len(stage), size=n)
        severity = rng.integers(1, NUM_SEVERITIES + 1, size=n)
        for f, name in enumerate(stage):
            for s in np.unique(severity[active & (family == f)]):
                members = np.flatnonzero(active & (family == f) & (severity == s))
                out[members] = apply_shift(out[members], name, int(s), rng)
                for i in members:
                    applied[i].append(name)
    return out, applied


class TokenCache:
    """Tokenise each distinct caption once: captions repeat a lot, and BPE in Python is slow."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in self.cache})
        if missing:
            for text, tokens in zip(missing, self.tokenizer(missing), strict=True):
                self.cache[text] = tokens
        return torch.stack([self.cache[t] for t in texts])


def to_model_input(images: np.ndarray, bundle: ClipBundle) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, exactly as ``autoft.data.transforms.eval_transform`` does at 32 px."""
    mean = torch.tensor(bundle.image.mean).view(1, 3, 1, 1)
    std = torch.tensor(bundle.image.std).view(1, 3, 1, 1)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    return (batch - mean) / std


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _optimizers(model: torch.nn.Module, recipe: PretrainRecipe) -> list[torch.optim.Optimizer]:
    """AdamW for the network, SparseAdam for the token embedding.

    The embedding holds 49,408 x width weights but our captions use a few hundred tokens; dense AdamW
    would update all of it every step (a third of the step time on two cores). A sparse gradient
    and SparseAdam touch only the rows in the batch; the saved weights are the same either way.
    Decay follows open_clip: none on gains, biases and the temperature.
    """
    model.token_embedding.sparse = True
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name == "token_embedding.weight":
            continue
        skip = param.ndim < 2 or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if skip else decay).append(param)
    dense = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    sparse = torch.optim.SparseAdam([model.token_embedding.weight], lr=recipe.lr, betas=(0.9, 0.98))
    return [dense, sparse]


def _lr_factor(step: int, recipe: PretrainRecipe) -> float:
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(recipe.steps - recipe.warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class PretrainResult:
    state: dict[str, torch.Tensor]
    seconds: float
    cpu_seconds: float  # all threads; on a shared machine wall time says more about the load than the recipe
    final_loss: float
    pool_size: int
    printed_images: int
    caption_kinds: dict[str, int] = field(default_factory=dict)
    loss_history: list[tuple[int, float]] = field(default_factory=list)  # (step, smoothed loss)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run on one intra-op thread, then restore the caller's setting.

    A width-64 model gains little from a second thread, and on a shared 2-core machine OpenMP's
    spinning threads made steps up to 40x slower (2.3 s instead of 0.06 s) whenever another process
    was busy. One thread also keeps the float summation order, hence the weights, the same on every
    machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _batch_rows(corpus_sizes: tuple[int, int], recipe: PretrainRecipe, rng: np.random.Generator) -> np.ndarray:
    """Corpus rows of one batch: ``printed_share`` of it from the printed digits, the rest handwritten."""
    handwritten, printed = corpus_sizes
    n_printed = round(recipe.batch_size * recipe.printed_share) if printed else 0
    n_hand = min(recipe.batch_size - n_printed, handwritten)
    rows = [rng.choice(handwritten, size=n_hand, replace=False)]
    if n_printed:
        rows.append(handwritten + rng.choice(printed, size=min(n_printed, printed), replace=False))
    return np.concatenate(rows)


def pretrain_clip(
    recipe: PretrainRecipe = DEFAULT_RECIPE, progress: bool = True, stop_after: int | None = None
) -> PretrainResult:
    """Contrastively pretrain ``recipe.model_name`` from scratch on the pretraining corpus.

    A function of the recipe alone (``recipe.pretrain_seed`` seeds everything), never of a run seed.
    ``stop_after`` ends after that many steps of the SAME run (the lr schedule still spans
    ``recipe.steps``): the first steps of a full build, for checking a build against its recorded
    loss history without the whole build.
    """
    started, cpu_started = time.monotonic(), time.process_time()
    seed = recipe.pretrain_seed
    corpus = PretrainCorpus.build(recipe)
    printed = corpus.printed
    sizes = (int((~printed).sum()), int(printed.sum()))
    rng = np.random.default_rng([seed, RECIPE_VERSION])
    plan = CaptionPlan.draw(corpus.labels, recipe, rng, corpus.families)
    style_words = dict(recipe.style_words)

    # fork_rng: seeding here must not change the caller's global torch random stream.
    with torch.random.fork_rng(devices=[]), _single_thread():
        torch.manual_seed(seed)
        bundle = create_clip(recipe.model_name, "")
        model = bundle.model.train()
        tokens = TokenCache(bundle.tokenizer)
        optimizers = _optimizers(model, recipe)
        dense_params = [p for group in optimizers[0].param_groups for p in group["params"]]
        max_log_scale = math.log(100.0)
        running: float | None = None
        history: list[tuple[int, float]] = []
        steps = recipe.steps if stop_after is None else min(stop_after, recipe.steps)
        bar = tqdm(range(steps), desc=f"pretraining {recipe.model_name} (seed {seed})", disable=not progress)
        for step in bar:
            batch = _batch_rows(sizes, recipe, rng)
            views, applied = augment_batch(corpus.images[batch], recipe, rng)
            captions = []
            for i, families in zip(batch, applied, strict=True):
                style = ""
                if families and rng.random() < recipe.style_word_prob:
                    words = style_words[families[rng.integers(len(families))]]
                    style = words[rng.integers(len(words))]
                captions.append(plan.caption(int(i), style, recipe))
            for optimizer in optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = recipe.lr * _lr_factor(step, recipe)
            image_features = F.normalize(model.encode_image(to_model_input(views, bundle)), dim=-1)
            text_features = F.normalize(model.encode_text(tokens(captions)), dim=-1)
            logits = model.logit_scale.exp() * image_features @ text_features.T
            targets = torch.arange(len(batch))
            loss = 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))
            if not torch.isfinite(loss):
                raise RuntimeError(f"pretraining diverged at step {step} (loss {float(loss)}); lower the recipe's lr")
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(dense_params, 1.0)
            for optimizer in optimizers:
                optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, max_log_scale)  # CLIP caps the temperature at 100
            value = loss.item()
            running = value if running is None else 0.98 * running + 0.02 * value
            if step % 50 == 0:
                bar.set_postfix(loss=f"{running:.3f}")
            if (step + 1) % 100 == 0 or step + 1 == steps:
                history.append((step + 1, round(running, 4)))
        bar.close()
        model.token_embedding.sparse = False
    names = ("word", "numeral", "no_class", "wrong_class")
    return PretrainResult(
        state={k: v.detach().clone() for k, v in model.state_dict().items()},
        seconds=time.monotonic() - started,
        cpu_seconds=time.process_time() - cpu_started,
        final_loss=float(running if running is not None else math.nan),
        pool_size=sizes[0],
        printed_images=sizes[1],
        caption_kinds={name: int((plan.kinds == k).sum()) for k, name in enumerate(names)},
        loss_history=history,
    )


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def build_environment() -> dict[str, str]:
    """What a bitwise-identical rebuild must share with the build: torch and the CPU kernels it dispatches to."""
    return {"torch": torch.__version__, "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def foundation_model_path(cache_dir: Path, recipe: PretrainRecipe = DEFAULT_RECIPE) -> Path:
    """Where the cache keeps the weights of ``recipe`` (the name holds the recipe's hash)."""
    return Path(cache_dir) / CACHE_SUBDIR / f"{recipe.model_name}-digits-{recipe.key()}.safetensors"


def shipped_model_path(recipe: PretrainRecipe | None = None) -> Path | None:
    """The packaged weights of ``recipe`` (default: ``DEFAULT_RECIPE``), or None when none ship for it."""
    recipe = recipe or DEFAULT_RECIPE
    path = SHIPPED_DIR / foundation_model_path(Path(), recipe).name
    return path if path.is_file() else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory file lock, so parallel pipeline steps wait for one build instead of each building."""
    import fcntl  # POSIX only; the pipeline's containers and CI are Linux

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
            # Safe to remove once the weights exist: a waiter re-checks them after taking the lock.
            if path.is_file():
                lock.unlink(missing_ok=True)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def foundation_model(
    cache_dir: Path, progress: bool = True, *, recipe: PretrainRecipe | None = None, use_shipped: bool = True
) -> Path:
    """Path of the pretrained ``recipe.model_name`` weights: shipped, cached, or built now.

    Load them with ``create_clip(recipe.model_name, str(path))``. The weights depend on the recipe
    alone (its ``pretrain_seed`` included), not on a run seed: every run of the benchmark fine-tunes
    the same foundation model, and its pretraining pool is excluded from every seed's splits. Weights
    shipped in the package for the recipe are used as they are (``use_shipped=False`` rebuilds, e.g.
    to check that the build reproduces them); otherwise a build is cached under ``cache_dir`` with a
    JSON record beside the weights.
    """
    recipe = recipe or DEFAULT_RECIPE  # looked up at call time, so tests can swap the default
    shipped = shipped_model_path(recipe) if use_shipped else None
    if shipped is not None:
        return shipped
    path = foundation_model_path(cache_dir, recipe)
    if path.is_file():
        return path
    with _exclusive(path):
        if path.is_file():  # another process built it while we waited for the lock
            return path
        result = pretrain_clip(recipe, progress)
        record = {
            "model_name": recipe.model_name,
            "pretrain_seed": recipe.pretrain_seed,
            "recipe_key": recipe.key(),
            "recipe": asdict(recipe),
            "recipe_version": RECIPE_VERSION,
            "build_seconds": round(result.seconds, 1),
            "build_cpu_seconds": round(result.cpu_seconds, 1),
            "final_loss": result.final_loss,
            "pool_size": result.pool_size,
            "printed_images": result.printed_images,
            "caption_kinds": result.caption_kinds,
            "loss_history": result.loss_history,
            "torch": torch.__version__,
            # Float kernels differ by ISA (AVX2, AVX512): a bitwise rebuild needs the same torch AND capability.
            "cpu_capability": build_environment()["cpu_capability"],
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps(record, indent=1))
        save_state_dict(result.state, path)  # written last: its presence marks a complete build
    return path
