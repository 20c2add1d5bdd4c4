"""The stages that only touch a method's Optuna study: create it before the workers, read the best back.

Free of torch, so the create-study and select-best steps start in about a second instead of five
(each pipeline run has one of each per searched method); ``autoft.stages`` holds the other stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoft.config import AutoFTConfig
from autoft.methods import method_search_config
from autoft.search.study import COUNTED_STATES, best_hparams, count_trials, create_or_load_study, prepare_study
from autoft.storage import atomic_write_json, redact_url

HPARAMS_SCHEMA = "autoft.hparams/v1"


def default_storage(run_dir: Path, method: str) -> str:
    return str(Path(run_dir) / "studies" / f"{method}.journal")


def stage_create_study(config: AutoFTConfig, method: str, storage: str) -> dict[str, int]:
    """Create (or resume) ``method``'s study before its workers start; orphaned trials are failed."""
    study = prepare_study(storage, method_search_config(config, method))
    return count_trials(study)


def stage_select_best(config: AutoFTConfig, method: str, storage: str, out_path: Path) -> dict[str, Any]:
    """Read the best trial's effective hyperparameters back from the study (user attrs)."""
    search = method_search_config(config, method)
    study = create_or_load_study(storage, search)
    hparams, best = best_hparams(study)
    trials = [
        {"number": t.number, "state": t.state.name, "value": t.value, "params": t.params}
        for t in study.get_trials(deepcopy=False)
    ]
    payload = {
        "schema": HPARAMS_SCHEMA,
        "method": method,
        "hparams": hparams.to_dict(),
        "best_value": best.value,
        "best_trial": best.number,
        "trials_complete": len(study.get_trials(deepcopy=False, states=COUNTED_STATES)),
        "storage": redact_url(storage),
        "trials": trials,
    }
    atomic_write_json(out_path, payload)
    return payload
