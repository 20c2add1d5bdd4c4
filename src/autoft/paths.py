"""Where the project keeps things it can rebuild (the built-in foundation model, prepared data).

One helper, so the CLI, the pipeline steps and the tests agree on the cache location.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "AUTOFT_CACHE"
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    """``$AUTOFT_CACHE`` when set (containers point it at a mounted volume), else ``<repo>/.cache/autoft``.

    The repo-relative default is git-ignored (``.cache/``); for an installed (non-editable) package
    there is no repo, so it falls back to ``~/.cache/autoft``.
    """
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / ".cache" / "autoft"
    return Path.home() / ".cache" / "autoft"
