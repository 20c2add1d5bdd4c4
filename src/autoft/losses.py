"""The nine named objective terms of AutoFT and their weighted sum.

Terms are keyed by name, never by position (see docs/method.md). Data terms read logits and features of a
batch; parameter terms read the trainable parameters and, for ``l1init``/``l2init``, a CLONE of the
zero-shot weights (the reference code aliased the live tensors, so those terms were always zero).
Parameter terms use foreach kernels: one launch per term instead of one per tensor. Their gradients have
closed forms (sign(theta)/N, 2 theta/N, sign(theta - theta0)/N, 2 (theta - theta0)/N), so the training step
can leave them out of the autograd graph and add them to ``.grad`` after the backward
(:func:`add_parameter_gradients`, ``WeightedObjective(..., parameter_gradients="closed_form")``): the same
update without four norm graphs over every trainable tensor (with FLYP's text tower that is most of a
nine-term step's cost; docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from autoft.hparams import LOSS_NAMES

DATA_TERMS = ("ce", "hinge", "entropy", "dcm", "flyp")
PARAM_TERMS = ("l1zero", "l2zero", "l1init", "l2init")
INIT_TERMS = ("l1init", "l2init")


@dataclass
class LossBatch:
    """What the data terms need from one forward pass."""

    logits: torch.Tensor  # [B, C], already scaled
    labels: torch.Tensor  # [B]
    image_features: torch.Tensor | None = None  # [B, D], L2-normalised (flyp)
    caption_features: torch.Tensor | None = None  # [B, D], L2-normalised (flyp)
    logit_scale: torch.Tensor | None = None  # scalar, exp of CLIP's learned log-scale (flyp)


class ParameterAnchor:
    """Detached clones of the zero-shot values of the trainable parameters (theta0)."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.reference = [p.detach().clone() for p in params]

    @classmethod
    def from_clones(cls, clones: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> ParameterAnchor:
        """Use already-cloned tensors (a cached zero-shot state dict) without copying them again."""
        if any(c.data_ptr() == p.data_ptr() for c, p in zip(clones, params, strict=True)):
            raise ValueError("theta0 would alias the live parameters; pass clones of the zero-shot weights")
        anchor = cls.__new__(cls)
        anchor.reference = [c.detach() for c in clones]
        anchor.check(params)
        return anchor

    def check(self, params: Sequence[torch.Tensor]) -> None:
        if len(params) != len(self.reference) or any(
            p.shape != r.shape for p, r in zip(params, self.reference, strict=True)
        ):
            raise ValueError("the parameter list does not match the zero-shot anchor it was cloned from")


def cross_entropy(batch: LossBatch) -> torch.Tensor:
    return F.cross_entropy(batch.logits, batch.labels)


def multiclass_hinge(batch: LossBatch) -> torch.Tensor:
    """Mean over the batch of sum_{j != y} max(0, z_j - z_y + 1)."""
    true_logit = batch.logits.gather(1, batch.labels[:, None])
    margins = (batch.logits - true_logit + 1.0).clamp(min=0.0)
    not_true = torch.ones_like(margins).scatter_(1, batch.labels[:, None], 0.0)
    return (margins * not_true).sum(dim=1).mean()


def _entropy_per_example(logits: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def entropy(batch: LossBatch) -> torch.Tensor:
    return _entropy_per_example(batch.logits).mean()


def dcm_reference(batch: LossBatch) -> torch.Tensor:
    """Batch mean of 1[argmax z != y] * H(p), the reference sign: lowers entropy on mistakes."""
    mistakes = (batch.logits.argmax(dim=1) != batch.labels).to(batch.logits.dtype).detach()
    return (mistakes * _entropy_per_example(batch.logits)).mean()


def dcm_confidence_min(batch: LossBatch) -> torch.Tensor:
    """The confidence-minimising variant: a positive weight RAISES entropy on mistakes."""
    return -dcm_reference(batch)


def flyp_contrastive(batch: LossBatch) -> torch.Tensor:
    """CLIP's symmetric InfoNCE between images and their captions at the learned temperature."""
    if batch.image_features is None or batch.caption_features is None or batch.logit_scale is None:
        raise ValueError("the flyp term needs image features, caption features and the logit scale")
    logits = batch.logit_scale * batch.image_features @ batch.caption_features.T
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def _param_count(params: Sequence[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


def _sum_of_norms(tensors: Sequence[torch.Tensor], order: int) -> torch.Tensor:
    norms = torch._foreach_norm(list(tensors), order)
    if order == 2:
        norms = torch._foreach_mul(norms, norms)
    return torch.stack(list(norms)).sum()


def l1_zero(params: Sequence[torch.Tensor], anchor: ParameterAnchor | None = None) -> torch.Tensor:
    return _sum_of_norms(params, 1) / _param_count(params)


def l2_zero(params: Sequence[torch.Tensor], anchor: ParameterAnchor | None = None) -> torch.Tensor:
    return _sum_of_norms(params, 2) / _param_count(params)


def _distance_to_init(params: Sequence[torch.Tensor], anchor: ParameterAnchor | None, order: int) -> torch.Tensor:
    if anchor is None:
        raise ValueError("l1init/l2init need the zero-shot anchor (a clone of theta0)")
    diffs = torch._foreach_sub(list(params), anchor.reference)
    return _sum_of_norms(diffs, order) / _param_count(params)


def l1_init(params: Sequence[torch.Tensor], anchor: ParameterAnchor | None = None) -> torch.Tensor:
    return _distance_to_init(params, anchor, 1)


def l2_init(params: Sequence[torch.Tensor], anchor: ParameterAnchor | None = None) -> torch.Tensor:
    return _distance_to_init(params, anchor, 2)


def add_parameter_gradients(
    weights: Mapping[str, float],
    params: Sequence[torch.Tensor],
    anchor: ParameterAnchor | None,
    scale: float = 1.0,
    diffs: list[torch.Tensor] | None = None,
) -> None:
    """Add ``scale`` times the gradient of sum over the parameter terms of weight * term to each ``.grad``.

    Closed forms (N = the parameter count): l1zero sign(theta)/N, l2zero 2 theta/N, l1init
    sign(theta - theta0)/N, l2init 2 (theta - theta0)/N, the same (sub)gradients autograd gives (sign(0) = 0).
    Call it after the backward of the data terms, before clipping and the optimizer step. A missing
    ``.grad`` (a parameter no data term reached) is created. ``diffs``: theta - theta0 already computed
    for these very weights (it is overwritten: one buffer serves every term, no new allocation).
    """
    count = _param_count(params)
    coef = {name: scale * float(weights.get(name, 0.0)) / count for name in PARAM_TERMS}
    if not any(coef.values()):
        return
    if (coef["l1init"] or coef["l2init"]) and anchor is None:
        raise ValueError("l1init/l2init need the zero-shot anchor (a clone of theta0)")
    with torch.no_grad():
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        theta = [p.detach() for p in params]
        if coef["l2zero"]:
            torch._foreach_add_(grads, theta, alpha=2.0 * coef["l2zero"])
        if coef["l1init"] or coef["l2init"]:
            if diffs is None:
                diffs = torch._foreach_sub(theta, anchor.reference)  # type: ignore[union-attr]
            if coef["l2init"]:
                torch._foreach_add_(grads, diffs, alpha=2.0 * coef["l2init"])
            if coef["l1init"]:
                torch._foreach_sign_(diffs)
                torch._foreach_add_(grads, diffs, alpha=coef["l1init"])
        if coef["l1zero"]:
            if diffs is None:
                signs = torch._foreach_sign(theta)
            else:  # reuse the buffer
                torch._foreach_copy_(diffs, theta)
                torch._foreach_sign_(diffs)
                signs = diffs
            torch._foreach_add_(grads, signs, alpha=coef["l1zero"])


DataTerm = Callable[[LossBatch], torch.Tensor]
ParamTerm = Callable[[Sequence[torch.Tensor], ParameterAnchor | None], torch.Tensor]

PARAM_TERM_FUNCTIONS: dict[str, ParamTerm] = {
    "l1zero": l1_zero,
    "l2zero": l2_zero,
    "l1init": l1_init,
    "l2init": l2_init,
}


def data_term_functions(dcm_sign: str = "reference") -> dict[str, DataTerm]:
    if dcm_sign not in ("reference", "confidence_min"):
        raise ValueError(f"dcm_sign must be 'reference' or 'confidence_min', got {dcm_sign!r}")
    return {
        "ce": cross_entropy,
        "hinge": multiclass_hinge,
        "entropy": entropy,
        "dcm": dcm_reference if dcm_sign == "reference" else dcm_confidence_min,
        "flyp": flyp_contrastive,
    }


class WeightedObjective:
    """Total loss = sum over selected names of weight[name] * term[name].

    ``parameter_gradients="closed_form"``: the parameter terms enter the total as constants (the same VALUE)
    and the caller adds their gradients with :meth:`add_parameter_gradients` after the backward; the
    default ``"autograd"`` keeps them in the graph.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        dcm_sign: str = "reference",
        parameter_gradients: str = "autograd",
    ) -> None:
        if parameter_gradients not in ("autograd", "closed_form"):
            raise ValueError(f"parameter_gradients must be 'autograd' or 'closed_form', got {parameter_gradients!r}")
        self.closed_form = parameter_gradients == "closed_form"
        self._diffs: list[torch.Tensor] | None = None  # theta - theta0 of the last call (closed-form mode)
        unknown = sorted(set(weights) - set(LOSS_NAMES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}; allowed: {list(LOSS_NAMES)}")
        if not weights:
            raise ValueError("the objective needs at least one weighted loss term")
        # Zero-weight terms are skipped entirely: they cost compute and add nothing.
        self.weights = {name: float(w) for name, w in weights.items() if w != 0.0}
        if not self.weights:
            raise ValueError(f"every loss weight is zero ({dict(weights)}); give at least one term a nonzero weight")
        self._data_terms = data_term_functions(dcm_sign)

    @property
    def needs_captions(self) -> bool:
        return "flyp" in self.weights

    @property
    def needs_anchor(self) -> bool:
        return any(name in self.weights for name in INIT_TERMS)

    def __call__(
        self,
        batch: LossBatch,
        params: Sequence[torch.Tensor] = (),
        anchor: ParameterAnchor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the total (differentiable) and each term's detached value (no host sync here)."""
        total = batch.logits.new_zeros((), dtype=torch.float32)
        values: dict[str, torch.Tensor] = {}
        constants = self._parameter_values(params, anchor) if self.closed_form else {}
        for name, weight in self.weights.items():
            if name in constants:
                value = constants[name]
            elif name in PARAM_TERM_FUNCTIONS:
                value = PARAM_TERM_FUNCTIONS[name](params, anchor)
            else:
                value = self._data_terms[name](batch)
            total = total + weight * value.float()
            values[name] = value.detach()
        return total, values

    @property
    def has_parameter_terms(self) -> bool:
        return any(name in PARAM_TERM_FUNCTIONS for name in self.weights)

    def _parameter_values(
        self, params: Sequence[torch.Tensor], anchor: ParameterAnchor | None
    ) -> dict[str, torch.Tensor]:
        """Closed-form mode: the parameter terms' values outside the graph. One theta - theta0 serves both
        init terms and is kept for :meth:`add_parameter_gradients` (the weights do not change in between)."""
        self._diffs = None
        selected = [name for name in PARAM_TERMS if name in self.weights]
        if not selected:
            return {}
        count = _param_count(params)
        values: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, order in (("l1zero", 1), ("l2zero", 2)):
                if name in selected:
                    values[name] = _sum_of_norms(params, order) / count
            if "l1init" in selected or "l2init" in selected:
                if anchor is None:
                    raise ValueError("l1init/l2init need the zero-shot anchor (a clone of theta0)")
                diffs = torch._foreach_sub([p.detach() for p in params], anchor.reference)
                for name, order in (("l1init", 1), ("l2init", 2)):
                    if name in selected:
                        values[name] = _sum_of_norms(diffs, order) / count
                self._diffs = diffs
        return values

    def add_parameter_gradients(
        self, params: Sequence[torch.Tensor], anchor: ParameterAnchor | None, scale: float = 1.0
    ) -> None:
        """In closed-form mode, add the parameter terms' gradients (see :func:`add_parameter_gradients`)."""
        if self.closed_form and self.has_parameter_terms:
            diffs, self._diffs = self._diffs, None
            add_parameter_gradients(self.weights, params, anchor, scale, diffs)
