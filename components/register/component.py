"""register: make the candidate that passed the gate a new registry version, and the champion."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def register(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    run_id: str,
    candidate_method: str,
    registered_model: str,
    gate_min_gain: float,
    mlflow_tracking_uri: str,
    output_dir: str,
    results: Input[Artifact],
) -> str:
    """Register the candidate's MLflow model (logged by its fine-tune step) and move ``champion`` to it.

    Only reached when the gate passed. The version gets alias ``candidate`` and the tags the next gate
    compares against (preset, metric, ood_avg, KFP run); ``champion`` moves only if the same rule as the
    gate's still holds now (another run may have promoted a model since). The champion then loads with
    ``mlflow.pyfunc.load_model("models:/<name>@champion")``.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        run_id: The KFP run id (finds the run's MLflow tree; a tag of the version).
        candidate_method: The method registered (autoft or autoft_wiseft).
        registered_model: Name in the MLflow registry; empty uses tracking.registered_model from the config.
        gate_min_gain: The gate's margin, re-checked against the champion at registration time.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        results: The report step's results.json.

    Returns:
        The registered version as models:/<name>/<version>.
    """
    from autoft.contracts import Results
    from components.gate.decision import OOD_AVG_TAG, Champion, decide
    from components.runtime import check_candidate, load_step_config, open_runs

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    table = Results.load(results.path)
    row = table.methods[candidate_method]
    name = registered_model.strip() or config.tracking.registered_model
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    tags = {
        "method": candidate_method,
        "preset": config.preset,
        "metric": config.metric,
        OOD_AVG_TAG: str(row.ood_avg),
        "id_test": str(row.id_test),
        "wiseft_alpha": str(row.wiseft_alpha),
        "kfp_run_id": run_id,
    }
    version = runs.register(name, runs.model_uri(candidate_method), tags)
    current = runs.champion(name)
    champion = Champion.from_version(current) if current is not None else None
    decision = decide(table, candidate_method, [], gate_min_gain, champion, config.preset, config.metric)
    if decision.passed:
        runs.promote(name, str(version.version))
    alias = "champion" if decision.passed else "candidate"
    print(f"registered {candidate_method} as models:/{name}/{version.version} (alias {alias}): {decision.reason}")
    return f"models:/{name}/{version.version}"
