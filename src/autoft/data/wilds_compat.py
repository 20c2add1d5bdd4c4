"""Import ``wilds`` safely: no background web call, and FMoW evaluation without building torch_scatter.

Two facts about wilds 2.0, learned the hard way:

- ``import wilds`` runs ``wilds/version.py``, which does ``from outdated import check_outdated`` inside
  ``try/except ImportError`` and, when that import works, starts a thread that asks PyPI whether wilds
  is outdated. Importing ``outdated`` itself starts a second such thread for the ``outdated`` package.
  Both are web calls from a machine that may have no network (and must not leak traffic). The env
  variable ``OUTDATED_IGNORE`` only silences the *warning*, not the call, and the call is inert today
  only by accident (``outdated`` imports ``pkg_resources``, which setuptools >= 81 no longer ships).
  We make the import fail instead: while ``wilds`` is imported, ``sys.modules['outdated'] = None``,
  which Python turns into an ``ImportError`` that wilds catches, so no thread is ever started.
- FMoW's evaluator imports ``torch_scatter`` for one group mean. Building that package takes minutes;
  ``torch.Tensor.scatter_reduce`` gives identical results, so a small stand-in module is registered
  in ``sys.modules`` when (and only when) the real package is not installed.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

import torch

STANDIN_NAME = "torch_scatter"
_MISSING = object()


def _broadcast(index: torch.Tensor, src: torch.Tensor, dim: int) -> torch.Tensor:
    """Expand ``index`` to ``src``'s shape the way torch_scatter does (1-D index along ``dim``)."""
    if index.dim() == 1:
        for _ in range(dim):
            index = index.unsqueeze(0)
    for _ in range(index.dim(), src.dim()):
        index = index.unsqueeze(-1)
    return index.expand(src.size())


def scatter(
    src: torch.Tensor,
    index: torch.Tensor,
    dim: int = -1,
    out: torch.Tensor | None = None,
    dim_size: int | None = None,
    reduce: str = "sum",
) -> torch.Tensor:
    """``torch_scatter.scatter`` on ``Tensor.scatter_reduce``: slots no index points at stay 0.

    ``reduce`` is one of sum/add, mean, mul, min, max. An ``out`` tensor is accumulated into for
    sum/add only: for the other reductions torch_scatter's handling of existing values differs from
    ``scatter_reduce``'s, and wilds never passes one.
    """
    if dim < 0:
        dim = src.dim() + dim
    index = _broadcast(index, src, dim)
    if reduce in ("sum", "add"):
        if out is not None:
            return out.scatter_add_(dim, index, src)
    elif out is not None:
        raise TypeError(f"the torch_scatter stand-in supports out= only with reduce='sum', not {reduce!r}")
    op = {"sum": "sum", "add": "sum", "mean": "mean", "mul": "prod", "min": "amin", "max": "amax"}.get(reduce)
    if op is None:
        raise ValueError(f"unknown reduce {reduce!r}; use sum, add, mean, mul, min or max")
    size = list(src.size())
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    size[dim] = dim_size
    # include_self=False over zeros: reduced slots hold only the scattered values, empty slots stay 0
    # (torch_scatter's convention, which WILDS relies on for groups absent from a split).
    return torch.zeros(size, dtype=src.dtype, device=src.device).scatter_reduce(
        dim, index, src, reduce=op, include_self=False
    )


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                dim_size: int | None = None) -> torch.Tensor:  # fmt: skip
    return scatter(src, index, dim, out, dim_size, reduce="sum")


def scatter_mean(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                 dim_size: int | None = None) -> torch.Tensor:  # fmt: skip
    return scatter(src, index, dim, out, dim_size, reduce="mean")


def install_torch_scatter_standin() -> bool:
    """Register the stand-in as ``torch_scatter`` unless the real package is importable.

    Returns True when the stand-in is (now) the module ``import torch_scatter`` yields.
    """
    existing = sys.modules.get(STANDIN_NAME)
    if existing is not None:
        return getattr(existing, "__autoft_standin__", False)
    if importlib.util.find_spec(STANDIN_NAME) is not None:
        return False  # the real package is installed: always prefer it
    module = types.ModuleType(STANDIN_NAME, "autoft's torch.scatter_reduce stand-in for torch_scatter")
    # A spec keeps importlib.util.find_spec('torch_scatter') from raising ValueError for this module.
    module.__spec__ = importlib.machinery.ModuleSpec(STANDIN_NAME, loader=None)
    module.__autoft_standin__ = True  # type: ignore[attr-defined]
    module.__version__ = "0.0+autoft.standin"  # type: ignore[attr-defined]
    module.scatter = scatter  # type: ignore[attr-defined]
    module.scatter_sum = scatter_sum  # type: ignore[attr-defined]
    module.scatter_add = scatter_sum  # type: ignore[attr-defined]
    module.scatter_mean = scatter_mean  # type: ignore[attr-defined]
    sys.modules[STANDIN_NAME] = module
    return True


def import_wilds() -> types.ModuleType:
    """``import wilds`` without its background PyPI call, with the torch_scatter stand-in in place.

    If something imported wilds earlier, its thread has already started and nothing can undo that;
    every import in this package goes through here so that does not happen.
    """
    install_torch_scatter_standin()
    if "wilds" in sys.modules:
        return sys.modules["wilds"]
    saved = sys.modules.get("outdated", _MISSING)
    sys.modules["outdated"] = None  # type: ignore[assignment]  # -> ImportError inside wilds/version.py
    try:
        wilds = importlib.import_module("wilds")
    finally:
        if saved is _MISSING:
            sys.modules.pop("outdated", None)
        else:
            sys.modules["outdated"] = saved  # type: ignore[assignment]
    return wilds
