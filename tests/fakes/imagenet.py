"""A fake ImageNet family in the layouts of the official archives, with a handful of WNID classes.

``ROOT/train|val/<wnid>/``, ``imagenet-c/<corruption>/<severity>/<wnid>/``, V2 with class-INDEX folders,
-R and -A over different class subsets, ``sketch/<wnid>/``, and ObjectNet with ``images/<folder>/`` plus
the release's four ``mappings/`` files (whose torchvision-index -> line map is deliberately not the
identity, so the chain through it is exercised). ``LOC_synset_mapping.txt`` names the classes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fakes import write_image

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361", "n01494475", "n01496331"]
NAMES = ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray"]
R_SUBSET = ["n01443537", "n01491361", "n01494475"]  # indices 1, 3, 4
A_SUBSET = ["n01440764", "n01484850", "n01496331", "n01494475"]  # indices 0, 2, 5, 4 (folder order sorts them)
# ObjectNet folders -> (label, ImageNet class indices); "sofa" has no ImageNet counterpart.
OBJECTNET = {"fish_tank": ("Fish tank", [0, 1]), "shark_toy": ("Shark toy", [2, 3, 4]), "ray": ("Ray", [5])}
OBJECTNET_UNMAPPED = "sofa"


@dataclass
class FakeImagenet:
    root: Path
    wnids: list[str] = field(default_factory=lambda: list(WNIDS))
    names: list[str] = field(default_factory=lambda: list(NAMES))


def make_fake_imagenet(
    root: Path,
    train_per_class: int = 4,
    corruptions: tuple[str, ...] = (),
    severities: tuple[int, ...] = (5,),
    kaggle_val: bool = False,
) -> FakeImagenet:
    """Every part of the family under ``root``; ``corruptions`` defaults to the 15 ImageNet-C ones."""
    from autoft.data.options import COMMON_CORRUPTIONS as IMAGENET_C_CORRUPTIONS

    root = Path(root)
    seed = iter(range(10**6))
    for k, wnid in enumerate(WNIDS):
        for i in range(train_per_class):
            write_image(root / "train" / wnid / f"{wnid}_{i}.JPEG", next(seed), fmt="JPEG")
        for i in range(2):
            name = f"ILSVRC2012_val_{k * 2 + i:08d}"
            target = root / "val" / f"{name}.JPEG" if kaggle_val else root / "val" / wnid / f"{name}.JPEG"
            write_image(target, next(seed), fmt="JPEG")
        for corruption in corruptions or IMAGENET_C_CORRUPTIONS:
            for severity in severities:
                write_image(root / "imagenet-c" / corruption / str(severity) / wnid / "c.JPEG", next(seed), fmt="JPEG")
        write_image(root / "imagenetv2-matched-frequency-format-val" / str(k) / "v2.jpeg", next(seed), fmt="JPEG")
        write_image(root / "sketch" / wnid / "s.JPEG", next(seed), fmt="JPEG")
    if kaggle_val:
        rows = ["ImageId,PredictionString"]
        rows += [f"ILSVRC2012_val_{k * 2 + i:08d},{w} 1 2 3 4" for k, w in enumerate(WNIDS) for i in range(2)]
        (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    for wnid in R_SUBSET:
        for i in range(2):
            write_image(root / "imagenet-r" / wnid / f"r{i}.jpg", next(seed), fmt="JPEG")
    for wnid in A_SUBSET:
        write_image(root / "imagenet-a" / wnid / "a.jpg", next(seed), fmt="JPEG")
    (root / "LOC_synset_mapping.txt").write_text(
        "".join(f"{w} {n}, synonym of {n}\n" for w, n in zip(WNIDS, NAMES, strict=True))
    )
    _objectnet(root / "objectnet-1.0", seed)
    return FakeImagenet(root)


def _objectnet(folder: Path, seed) -> None:
    for name in [*OBJECTNET, OBJECTNET_UNMAPPED]:
        for i in range(2):
            write_image(folder / "images" / name / f"{name}_{i}.png", next(seed), size=12, fmt="PNG")
    mappings = folder / "mappings"
    mappings.mkdir(parents=True)
    # The 2012 label file lists names in ImageNet-2012 id order, here the classes reversed, so the
    # torchvision index -> line map is index -> (n - 1 - index).
    n = len(WNIDS)
    (mappings / "imagenet_to_label_2012_v2").write_text("".join(f"{NAMES[n - 1 - line]}\n" for line in range(n)))
    (mappings / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): n - 1 - i for i in range(n)}))
    folder_to_label = {name: label for name, (label, _) in OBJECTNET.items()}
    folder_to_label[OBJECTNET_UNMAPPED] = "Sofa"
    (mappings / "folder_to_objectnet_label.json").write_text(json.dumps(folder_to_label))
    to_imagenet = {label: "; ".join(NAMES[i] for i in members) for label, members in OBJECTNET.values()}
    (mappings / "objectnet_to_imagenet_1k.json").write_text(json.dumps(to_imagenet))
