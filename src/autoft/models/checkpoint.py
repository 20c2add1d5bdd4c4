"""Checkpoints in safe formats: safetensors for weights, weights_only torch.load for the rest.

Nothing here unpickles arbitrary objects. A saved classifier is a folder with ``model.safetensors``
and ``model_card.json`` (model config name, class names, templates, head mode, provenance).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autoft.atomic import atomic_path, atomic_write_text
from autoft.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
CARD_SCHEMA = "autoft.model_card/v1"


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _as_os_error(error: Exception, path: Path) -> OSError | None:
    """The OSError a torch or safetensors write error hides (a full disk), naming ``path``; None if none.

    torch.save into a Python file raises ``RuntimeError('... unexpected pos ...')`` with the file's
    ``OSError`` as its context; safetensors only says ``(os error 28)`` in its message.
    """
    context = error.__context__
    if isinstance(context, OSError) and context.errno:
        return OSError(context.errno, context.strerror, str(path))
    match = _OS_ERROR.search(str(error))
    if match:
        number = int(match.group(1))
        return OSError(number, os.strerror(number), str(path))
    return None


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    # Clone to break storage sharing (safetensors refuses shared tensors) and move to CPU.
    tensors = {key: value.detach().to("cpu").contiguous().clone() for key, value in state.items()}
    with atomic_path(Path(path)) as tmp:
        try:
            save_file(tensors, str(tmp))
        except SafetensorError as error:
            raise (_as_os_error(error, Path(path)) or error) from None
    return Path(path)


def save_torch_state(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` (tensors and plain values only, loaded back with ``weights_only=True``), atomically;
    a full disk raises the ``OSError`` (ENOSPC) the CLI reports in one line, not torch's RuntimeError."""
    with atomic_path(Path(path)) as tmp:
        try:
            with open(tmp, "wb") as handle:  # a Python file, so the disk's OSError survives as the context
                torch.save(payload, handle)
        except RuntimeError as error:
            raise (_as_os_error(error, Path(path)) or error) from None
    return Path(path)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load weights from .safetensors, or a torch state dict with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"corrupt or unsafe checkpoint {path}: {error}. Re-create it, or convert it to .safetensors"
        ) from None
    except Exception as error:
        raise CheckpointError(f"cannot read checkpoint {path} safely: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    check_finite(state, path)
    # Checkpoints saved from DataParallel/DDP prefix keys with 'module.'.
    return {key.removeprefix("module."): value for key, value in state.items()}


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Weights with NaN or infinity would evaluate to garbage without a word: refuse them when they load."""
    broken = [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]
    if broken:
        raise CheckpointError(
            f"{path}: {len(broken)} of {len(state)} tensors hold NaN or infinite values (e.g. {broken[0]!r}); "
            "these weights are broken (a diverged run?): re-create them"
        )


def save_classifier(folder: Path, state: dict[str, torch.Tensor], card: dict[str, Any]) -> Path:
    """Write weights and model card; the card is written last so its presence marks completeness."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(state, folder / WEIGHTS_FILE)
    atomic_write_text(folder / CARD_FILE, json.dumps({"schema": CARD_SCHEMA, **card}, indent=2))
    return folder


def read_model_card(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"no {CARD_FILE} in {folder}: not a saved AutoFT model (or an incomplete save)")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"corrupt model card {path}: {error}") from None
    if card.get("schema") != CARD_SCHEMA:
        raise CheckpointError(f"{path}: unknown model card schema {card.get('schema')!r}, expected {CARD_SCHEMA}")
    return card
