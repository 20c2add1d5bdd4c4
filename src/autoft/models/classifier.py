"""The zero-shot CLIP classifier: the image tower plus a linear head built from class-name prompts.

Head rows are the averaged, L2-normalised text embeddings of every template filled with each class
name, renormalised (open_clip's ``build_zero_shot_classifier``) and scaled by CLIP's logit scale, so
the initial logits equal CLIP's zero-shot logits. Two head modes (docs/method.md): ``linear`` trains
this head; ``text`` keeps it frozen during training and rebuilds it from the fine-tuned text tower
before evaluation (FLYP-style).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from autoft.errors import CheckpointError
from autoft.models.checkpoint import load_state_dict_file, read_model_card, save_classifier
from autoft.models.factory import ClipBundle, ImageSpec, create_clip

TOKEN_EMBEDDING = "token_embedding.weight"  # open_clip's name, inside the CLIP module


def fill_template(template: str, class_name: str) -> str:
    # str.replace, not str.format: real prompt lists contain other braces and apostrophes.
    return template.replace("{c}", class_name)


class CLIPClassifier(nn.Module):
    """CLIP image tower + linear head; the text tower stays attached for contrastive losses."""

    def __init__(
        self,
        bundle: ClipBundle,
        class_names: Sequence[str],
        templates: Sequence[str],
        head_mode: str = "linear",
        build_head: bool = True,
    ) -> None:
        super().__init__()
        self.clip = bundle.model
        self.tokenizer = bundle.tokenizer
        self.image_spec: ImageSpec = bundle.image
        self.model_name = bundle.model_name
        self.class_names = list(class_names)
        self.templates = list(templates)
        self.head_mode = head_mode
        with torch.no_grad():
            embed_dim = int(self.clip.encode_text(self.tokenizer(["x"])).shape[-1])
        self.head = nn.Linear(embed_dim, len(self.class_names))
        self._caption_rows: dict[tuple[int, int], torch.Tensor] = {}
        if build_head:  # skipped when weights are loaded next: encoding every prompt is costly
            self.refresh_text_head()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.head.weight.device)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text features of raw strings (gradients flow when the text tower trains)."""
        return F.normalize(self.clip.encode_text(self.tokenize(texts)), dim=-1)

    def caption_tokens(self, labels: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
        """Tokens of "template ``templates[i]`` filled with class ``labels[i]``", on the model's device.

        Each (class, template) pair is tokenised once per model: FLYP draws a template per example every
        step, and tokenising those strings again costs more host time than a small text tower's forward.
        """
        pairs = list(zip(labels.tolist(), templates.tolist(), strict=True))
        missing = sorted(set(pairs) - set(self._caption_rows))
        if missing:
            texts = [fill_template(self.templates[t], self.class_names[c]) for c, t in missing]
            for pair, row in zip(missing, self.tokenizer(texts), strict=True):
                self._caption_rows[pair] = row
        rows = torch.stack([self._caption_rows[pair] for pair in pairs])
        return rows.to(self.head.weight.device, non_blocking=True)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.exp()

    @torch.no_grad()
    def zeroshot_weights(self) -> torch.Tensor:
        """[classes, dim] head weights from the current text tower, scaled by the logit scale."""
        was_training = self.clip.training
        self.clip.eval()
        # Callables, not format strings: our templates use a named '{c}' slot and real prompts hold braces.
        templates = [lambda name, template=template: fill_template(template, name) for template in self.templates]
        weights = open_clip.build_zero_shot_classifier(
            self.clip, self.tokenizer, self.class_names, templates, device=self.head.weight.device
        )
        self.clip.train(was_training)
        return weights.T * self.logit_scale

    @torch.no_grad()
    def refresh_text_head(self) -> None:
        """Rebuild the head from the text tower: at construction, and before evaluating `text` mode."""
        self.head.weight.copy_(self.zeroshot_weights())
        self.head.bias.zero_()

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encode_images(images)
        return self.head(features), features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_features(images)[0]

    def set_trainable(self, train_text: bool, train_token_embedding: bool = True) -> list[nn.Parameter]:
        """Choose what trains and return the trainable parameters.

        The image tower always trains. The text tower and logit scale train only when a loss needs
        them (``flyp``); otherwise weight decay and the norm terms would move weights no loss uses.
        ``train_token_embedding=False`` keeps the token embedding (vocabulary x width, most of the text
        tower's parameters, nearly all rows unused by the prompts) frozen even then. The linear head
        trains only in ``linear`` head mode.
        """
        for name, param in self.clip.named_parameters():
            trains = name.startswith("visual.") or train_text
            if name == TOKEN_EMBEDDING:
                trains = train_text and train_token_embedding
            param.requires_grad_(trains)
        for param in self.head.parameters():
            param.requires_grad_(self.head_mode == "linear")
        return [p for p in self.parameters() if p.requires_grad]

    def prepare_for_eval(self) -> None:
        if self.head_mode == "text":
            self.refresh_text_head()

    def card(self, **extra: Any) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "class_names": self.class_names,
            "templates": self.templates,
            "head_mode": self.head_mode,
            "image": {"size": self.image_spec.size, "mean": self.image_spec.mean, "std": self.image_spec.std},
            **extra,
        }

    def save(self, folder: Path, **card_extra: Any) -> Path:
        return save_classifier(folder, self.state_dict(), self.card(**card_extra))


def build_zeroshot_classifier(
    model_name: str,
    pretrained: str,
    class_names: Sequence[str],
    templates: Sequence[str],
    head_mode: str = "linear",
    device: str | torch.device = "cpu",
) -> CLIPClassifier:
    if not class_names:
        raise ValueError("no class names: the data must define at least one class")
    bundle = create_clip(model_name, pretrained, device=device)
    return CLIPClassifier(bundle, class_names, templates, head_mode).to(device)


def load_classifier(folder: str | Path, device: str | torch.device = "cpu") -> CLIPClassifier:
    """Load a classifier saved by :meth:`CLIPClassifier.save` (weights via safetensors only)."""
    folder = Path(folder)
    card = read_model_card(folder)
    state = load_state_dict_file(folder / "model.safetensors")
    bundle = create_clip(card["model_name"], "", device="cpu")
    classifier = CLIPClassifier(
        bundle, card["class_names"], card["templates"], card.get("head_mode", "linear"), build_head=False
    )
    try:
        classifier.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{folder}: weights do not fit the model card: {error}") from None
    return classifier.to(device)
