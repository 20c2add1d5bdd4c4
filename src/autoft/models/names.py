"""Which ``model.name`` values open_clip can build, known without importing open_clip (or torch).

Config validation runs in every command, so it reads the model-config file names that open_clip ships
(its ``model_configs`` folder, found through the import system) and the project's own; a name outside both
fails at the edge instead of in the first step that builds a model.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path

from autoft.errors import ConfigError

PROJECT_CONFIGS = Path(__file__).parent / "model_configs"
# open_clip builds these from a location instead of a registered config name.
REMOTE_PREFIXES = ("hf-hub:", "local-dir:")


@functools.cache
def known_model_names() -> frozenset[str]:
    folders = [PROJECT_CONFIGS]
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(location) / "model_configs" for location in spec.submodule_search_locations]
    return frozenset(path.stem for folder in folders if folder.is_dir() for path in folder.glob("*.json"))


def check_model_name(name: str) -> str:
    if name.startswith(REMOTE_PREFIXES) and len(name) > name.index(":") + 1:
        return name
    known = known_model_names()
    if not known or name in known:  # no open_clip installed: the factory reports it when a model is built
        return name
    close = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see open_clip.list_models()"
    raise ConfigError(f"unknown model {name!r}: not an open_clip model config; {hint} (or hf-hub:ORG/NAME)")
