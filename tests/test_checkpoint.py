"""Checkpoints: safe formats only; corrupt or malicious files fail with a clear error, never execute."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from autoft.models.checkpoint import (
    CheckpointError,
    load_state_dict_file,
    read_model_card,
    save_classifier,
    save_state_dict,
)
from autoft.models.classifier import CLIPClassifier, load_classifier
from autoft.models.factory import create_clip


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "layer.weight": torch.randn(4, 3, generator=generator),
        "layer.bias": torch.zeros(4),
        "ids": torch.arange(5),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
        assert a[key].dtype == b[key].dtype, key


def test_safetensors_round_trip(tmp_path: Path) -> None:
    state = _state()
    state["tied"] = state["layer.weight"]  # shared storage must not break the save
    path = save_state_dict(state, tmp_path / "w.safetensors")
    _assert_same(load_state_dict_file(path), state)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left behind


def test_torch_state_dicts_are_unwrapped_and_unprefixed(tmp_path: Path) -> None:
    state = _state()
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pt")
    _assert_same(load_state_dict_file(tmp_path / "ddp.pt"), state)


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nothing\.safetensors"):
        load_state_dict_file(tmp_path / "nothing.safetensors")


@pytest.mark.parametrize("name", ["garbage.safetensors", "garbage.pt", "garbage.bin"])
def test_garbage_bytes_are_a_checkpoint_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(64) + b"\x00not a checkpoint")
    with pytest.raises(CheckpointError, match=name):
        load_state_dict_file(path)


def test_truncated_safetensors_is_a_checkpoint_error(tmp_path: Path) -> None:
    path = tmp_path / "full.safetensors"
    save_file(_state(), str(path))
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) - 20])
    with pytest.raises(CheckpointError, match=r"corrupt or unsafe checkpoint .*truncated\.safetensors"):
        load_state_dict_file(truncated)
    header_only = tmp_path / "header.safetensors"
    header_only.write_bytes(data[:6])
    with pytest.raises(CheckpointError, match=r"header\.safetensors"):
        load_state_dict_file(header_only)


class _Payload:
    """Unpickling this object creates a folder: a stand-in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_malicious_pickle_is_refused_and_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        load_state_dict_file(path)
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "weight": torch.zeros(2)}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_state_dict_file(tmp_path / "mixed.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="does not hold a state dict of tensors"):
        load_state_dict_file(tmp_path / "list.pt")


def test_saved_classifier_loads_back_identically(tiny_classifier: CLIPClassifier, tmp_path: Path) -> None:
    folder = tiny_classifier.save(tmp_path / "model", provenance="test")
    card = read_model_card(folder)
    assert card["class_names"] == tiny_classifier.class_names
    assert card["model_name"] == "autoft-tiny-vit" and card["provenance"] == "test"
    loaded = load_classifier(folder)
    _assert_same(loaded.state_dict(), tiny_classifier.state_dict())
    images = torch.rand(2, 3, 32, 32)
    tiny_classifier.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), tiny_classifier(images))


def test_model_card_problems_name_the_file(tiny_classifier: CLIPClassifier, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no model_card\.json in"):
        read_model_card(tmp_path)
    folder = tiny_classifier.save(tmp_path / "model")
    card_path = folder / "model_card.json"
    card = json.loads(card_path.read_text())
    card_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt model card"):
        read_model_card(folder)
    card_path.write_text(json.dumps({**card, "schema": "other/v9"}))
    with pytest.raises(CheckpointError, match="unknown model card schema 'other/v9'"):
        read_model_card(folder)


def test_weights_that_do_not_fit_the_card_are_refused(tiny_classifier: CLIPClassifier, tmp_path: Path) -> None:
    card = tiny_classifier.card()
    card["class_names"] = [*card["class_names"], "extra"]  # 4 classes in the card, 3 rows in the head
    folder = save_classifier(tmp_path / "model", tiny_classifier.state_dict(), card)
    with pytest.raises(CheckpointError, match="weights do not fit the model card"):
        load_classifier(folder)


def test_pretrained_weights_file_must_match_the_model(tiny_classifier: CLIPClassifier, tmp_path: Path) -> None:
    path = save_state_dict(tiny_classifier.clip.state_dict(), tmp_path / "clip.safetensors")
    bundle = create_clip("autoft-tiny-vit", str(path))
    _assert_same(bundle.model.state_dict(), tiny_classifier.clip.state_dict())
    with pytest.raises(CheckpointError, match="does not match model 'autoft-small-vit'"):
        create_clip("autoft-small-vit", str(path))
    with pytest.raises(CheckpointError, match="pretrained weights file not found"):
        create_clip("autoft-tiny-vit", str(tmp_path / "absent.safetensors"))
    with pytest.raises(ValueError, match="unknown model 'ViT-Z-99'"):
        create_clip("ViT-Z-99")
