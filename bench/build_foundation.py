"""Rebuild the digits foundation model from its recipe, time it, and check it against the shipped weights.

The default recipe takes minutes on one core, so its weights ship in the package
(``src/autoft/models/weights``); this script is how they were made and how to check them:

    PYTHONPATH=src:. .venv/bin/python bench/build_foundation.py              # build into a temp dir, compare
    PYTHONPATH=src:. .venv/bin/python bench/build_foundation.py --twice      # build twice: is it deterministic?
    PYTHONPATH=src:. .venv/bin/python bench/build_foundation.py --install    # (re)write the shipped weights

Pretraining runs on one intra-op thread (``autoft.models.pretrain``), which fixes the float summation
order; the SHA-256 of the weights file is the check.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autoft.models.pretrain import DEFAULT_RECIPE, SHIPPED_DIR, file_sha256, foundation_model, shipped_model_path


def build_once(folder: Path) -> tuple[Path, float, str]:
    started = time.perf_counter()
    path = foundation_model(folder, progress=False, recipe=DEFAULT_RECIPE, use_shipped=False)
    return path, time.perf_counter() - started, file_sha256(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twice", action="store_true", help="build twice and compare the two hashes")
    parser.add_argument("--install", action="store_true", help="copy the build (weights + record) into the package")
    args = parser.parse_args(argv)
    report: dict[str, object] = {"recipe_key": DEFAULT_RECIPE.key()}
    shipped = shipped_model_path(DEFAULT_RECIPE)
    report["shipped_sha256"] = file_sha256(shipped) if shipped else None
    with tempfile.TemporaryDirectory() as tmp:
        builds = []
        for attempt in range(2 if args.twice else 1):
            path, seconds, digest = build_once(Path(tmp) / f"build{attempt}")
            builds.append({"seconds": round(seconds, 1), "sha256": digest})
            print(f"build {attempt + 1}: {seconds:.1f} s, sha256 {digest}", flush=True)
        report["builds"] = builds
        report["deterministic"] = len({b["sha256"] for b in builds}) == 1 if args.twice else None
        report["matches_shipped"] = report["shipped_sha256"] == builds[0]["sha256"] if shipped else None
        if args.install:
            SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SHIPPED_DIR / path.name)
            record = json.loads(path.with_suffix(".json").read_text())
            record["sha256"] = builds[0]["sha256"]
            record["deterministic_rebuild"] = report["deterministic"]
            (SHIPPED_DIR / path.with_suffix(".json").name).write_text(json.dumps(record, indent=1) + "\n")
            print(f"installed {path.name} into {SHIPPED_DIR}")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
