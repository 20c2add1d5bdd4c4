"""Fake WILDS iWildCam v2.0 and FMoW v1.1 copies in the layouts the ``wilds`` package reads.

iWildCam: ``iwildcam_v2.0/{RELEASE_v2.0.txt, metadata.csv, categories.csv, train/<filename>}`` with
contiguous y / location / sequence ids. FMoW: ``fmow_v1.1/{RELEASE_v1.1.txt, rgb_metadata.csv,
country_code_mapping.csv, images/rgb_img_<i>.png}``; WILDS derives its splits from ``split`` and the
timestamp (before 2013: ID; 2013-2015: OOD val; 2016 on: OOD test), and regions from country codes.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fakes import write_image

IWILDCAM_SPLITS = ("train", "val", "test", "id_val", "id_test")
IWILDCAM_CLASSES = ("empty", "tayassu pecari", "meleagris ocellata", "equus quagga")

# FMoW country codes -> region; "ZZZ" is absent from the mapping, so WILDS files it under "Other".
FMOW_COUNTRIES = {"USA": "Americas", "FRA": "Europe", "KEN": "Africa", "JPN": "Asia"}
FMOW_CATEGORIES = ("airport", "barn", "dam", "zoo")  # among WILDS' 62 names


def make_fake_iwildcam(root: Path, per_split: int = 8, with_categories: bool = True) -> Path:
    """Write a fake iWildCam v2.0 under ``root``; returns ``root`` (the WILDS root_dir)."""
    data = Path(root) / "iwildcam_v2.0"
    (data / "train").mkdir(parents=True, exist_ok=True)
    (data / "RELEASE_v2.0.txt").write_text("fake iWildCam v2.0 for tests\n")
    rows = []
    for s, split in enumerate(IWILDCAM_SPLITS):
        for i in range(per_split):
            n = len(rows)
            filename = f"{n:04d}.jpg"
            write_image(data / "train" / filename, seed=n, fmt="JPEG")
            rows.append(
                {
                    "split": split,
                    "filename": filename,
                    "y": n % len(IWILDCAM_CLASSES),
                    "location_remapped": s * 2 + i % 2,  # locations differ between splits, as in WILDS
                    "sequence_remapped": n,
                    "datetime": f"2013-0{1 + s}-1{i % 10} 08:0{i % 10}:00.000",
                }
            )
    with open(data / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if with_categories:
        with open(data / "categories.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["y", "category_id", "name"])
            for y, name in enumerate(IWILDCAM_CLASSES):
                writer.writerow([y, 100 + y, name])
    return Path(root)


def make_fake_fmow(root: Path, per_cell: int = 2) -> Path:
    """Write a fake FMoW v1.1 under ``root``; every WILDS split gets every country (and "Other")."""
    data = Path(root) / "fmow_v1.1"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "RELEASE_v1.1.txt").write_text("fake FMoW v1.1 for tests\n")
    with open(data / "country_code_mapping.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["alpha-3", "region"])
        writer.writerows(FMOW_COUNTRIES.items())
    # (metadata split, year): ID train/val/test before 2013, OOD val 2013-2015, OOD test 2016+.
    cells = [("train", 2002), ("val", 2011), ("test", 2012), ("val", 2014), ("test", 2017), ("seq", 2017)]
    rows = []
    for split, year in cells:
        for country in [*FMOW_COUNTRIES, "ZZZ"]:
            for k in range(per_cell):
                n = len(rows)
                rows.append(
                    {
                        "split": split,
                        "img_filename": f"img_{n}.jpg",
                        "category": FMOW_CATEGORIES[n % len(FMOW_CATEGORIES)],
                        "country_code": country,
                        "timestamp": f"{year}-0{1 + k % 9}-15T10:30:00Z",
                    }
                )
                if split != "seq":  # sequestered rows are dropped by WILDS and ship without images
                    write_image(data / "images" / f"rgb_img_{n}.png", seed=1000 + n, fmt="PNG")
    with open(data / "rgb_metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Path(root)
