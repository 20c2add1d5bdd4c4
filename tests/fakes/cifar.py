"""Fake CIFAR-10 python batches, CIFAR-10-C, CIFAR-10.1 and CIFAR-10.2 in their release layouts.

The batches are written as the real ones were: Python 2 protocol-2 pickles (byte-string keys, numpy
arrays through ``numpy.core.multiarray._reconstruct``), assembled opcode by opcode since Python 3's
pickler cannot emit Python 2 strings. Every image encodes its label and row so tests can check both:
red = 20 * label, green = row % 256, blue = severity (CIFAR-10-C) or 0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Global:
    """A pickle GLOBAL opcode operand."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


def _emit(obj: Any, out: bytearray) -> None:
    if obj is None:
        out += b"N"
    elif isinstance(obj, bool):
        out += b"\x88" if obj else b"\x89"
    elif isinstance(obj, int):
        out += b"J" + struct.pack("<i", obj)
    elif isinstance(obj, (str, bytes)):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        # Python 2 str: SHORT_BINSTRING / BINSTRING (opcodes Python 3 never writes).
        out += (b"U" + bytes([len(data)]) if len(data) < 256 else b"T" + struct.pack("<I", len(data))) + data
    elif isinstance(obj, Global):
        out += b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n"
    elif isinstance(obj, tuple):
        out += b"("
        for item in obj:
            _emit(item, out)
        out += b"t"
    elif isinstance(obj, list):
        out += b"]("
        for item in obj:
            _emit(item, out)
        out += b"e"
    elif isinstance(obj, dict):
        out += b"}("
        for key, value in obj.items():
            _emit(key, out)
            _emit(value, out)
        out += b"u"
    elif isinstance(obj, np.ndarray):
        assert obj.dtype == np.uint8
        _emit(Global("numpy.core.multiarray", "_reconstruct"), out)
        _emit((Global("numpy", "ndarray"), (0,), "b"), out)
        out += b"R"
        dtype = bytearray()
        _emit(Global("numpy", "dtype"), dtype)
        _emit(("u1", 0, 1), dtype)
        dtype += b"R"
        _emit((3, "|", None, None, None, -1, -1, 0), dtype)
        dtype += b"b"
        out += b"(" + b"J" + struct.pack("<i", 1)
        _emit(tuple(obj.shape), out)
        out += dtype
        _emit(False, out)
        _emit(obj.tobytes(), out)
        out += b"tb"
    else:
        raise TypeError(f"cannot emit {type(obj).__name__}")


def py2_pickle(obj: Any) -> bytes:
    out = bytearray(b"\x80\x02")
    _emit(obj, out)
    return bytes(out + b".")


def _cifar_rows(labels: np.ndarray, start: int) -> np.ndarray:
    """Channel-major rows [N, 3072] as the batches store them."""
    n = len(labels)
    planes = np.zeros((n, 3, 32, 32), dtype=np.uint8)
    planes[:, 0] = (20 * labels)[:, None, None]
    planes[:, 1] = ((start + np.arange(n)) % 256)[:, None, None]
    return planes.reshape(n, 3072)


def hwc_images(labels: np.ndarray, start: int = 0, blue: int = 0) -> np.ndarray:
    n = len(labels)
    images = np.zeros((n, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = (20 * labels)[:, None, None]
    images[..., 1] = ((start + np.arange(n)) % 256)[:, None, None]
    images[..., 2] = blue
    return images


@dataclass
class FakeCifar:
    root: Path
    train_labels: np.ndarray
    test_labels: np.ndarray
    c_labels: np.ndarray  # labels.npy of CIFAR-10-C (all severities)
    per_severity: int
    cifar101_labels: np.ndarray
    cifar102_labels: np.ndarray


def make_fake_cifar(
    root: Path, per_batch: int = 20, per_severity: int = 10, corruptions: tuple[str, ...] = ()
) -> FakeCifar:
    """All four parts under ``root``; ``corruptions`` defaults to the 15 standard CIFAR-10-C ones."""
    from autoft.data.options import COMMON_CORRUPTIONS as CIFAR10_C_CORRUPTIONS

    root = Path(root)
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    train_labels = []
    for b in range(5):
        labels = (np.arange(per_batch) + b) % 10
        train_labels.append(labels)
        batch = {
            "batch_label": f"training batch {b + 1} of 5",
            "labels": [int(v) for v in labels],
            "data": _cifar_rows(labels, b * per_batch),
            "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
        }
        (batches / f"data_batch_{b + 1}").write_bytes(py2_pickle(batch))
    test_labels = (np.arange(per_batch) * 3) % 10
    test = {"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test_labels],
            "data": _cifar_rows(test_labels, 0), "filenames": [f"t{i}.png" for i in range(per_batch)]}  # fmt: skip
    (batches / "test_batch").write_bytes(py2_pickle(test))
    meta = {"num_cases_per_batch": per_batch, "label_names": CLASSES, "num_vis": 3072}
    (batches / "batches.meta").write_bytes(py2_pickle(meta))

    c_dir = root / "CIFAR-10-C"
    c_dir.mkdir(exist_ok=True)
    c_labels = (np.arange(5 * per_severity) * 7) % 10
    np.save(c_dir / "labels.npy", c_labels.astype(np.uint8))
    for corruption in corruptions or CIFAR10_C_CORRUPTIONS:
        blocks = [
            hwc_images(c_labels[s * per_severity : (s + 1) * per_severity], s * per_severity, blue=s + 1)
            for s in range(5)
        ]
        np.save(c_dir / f"{corruption}.npy", np.concatenate(blocks))

    c101 = root / "CIFAR-10.1"
    c101.mkdir(exist_ok=True)
    cifar101_labels = (np.arange(12) * 5 + 1) % 10
    np.save(c101 / "cifar10.1_v6_data.npy", hwc_images(cifar101_labels))
    np.save(c101 / "cifar10.1_v6_labels.npy", cifar101_labels.astype(np.int64))

    c102 = root / "CIFAR-10.2"
    c102.mkdir(exist_ok=True)
    cifar102_labels = (np.arange(14) * 3 + 2) % 10
    np.savez(c102 / "cifar102_test.npz", images=hwc_images(cifar102_labels), labels=cifar102_labels)
    return FakeCifar(root, np.concatenate(train_labels), test_labels, c_labels, per_severity, cifar101_labels,
                     cifar102_labels)  # fmt: skip
