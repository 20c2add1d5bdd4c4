"""gate: decide whether the candidate model is promoted; the pipeline's dsl.If reads the returned bool."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def gate(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    candidate_method: str,
    gate_baselines: list[str],
    gate_min_gain: float,
    registered_model: str,
    mlflow_tracking_uri: str,
    output_dir: str,
    run_id: str,
    results: Input[Artifact],
    gate_metrics: Output[Metrics],
) -> bool:
    """Pass when the candidate's OOD average beats every baseline and the registry's champion by gate_min_gain.

    The champion is the version behind the ``champion`` alias of the registered model. One measured on
    another preset or metric (or without an OOD average) cannot be compared, so it blocks the gate
    instead of being replaced blindly (components/gate/decision.py holds the one rule). The decision and
    its reason are tagged on the pipeline's MLflow run, so a skipped registration is explained there.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        candidate_method: The model judged (autoft or autoft_wiseft).
        gate_baselines: Methods of this run whose OOD average the candidate must beat.
        gate_min_gain: Margin (a fraction: 0.005 is half a point) by which it must beat them and the champion.
        registered_model: Name in the MLflow registry; empty uses tracking.registered_model from the config.
        mlflow_tracking_uri: MLflow tracking URI; empty uses the config, then MLFLOW_TRACKING_URI.
        output_dir: Optional local or mounted folder of the run (SQLite tracking lives there locally).
        run_id: The KFP run id (finds the run's MLflow tree).
        results: The report step's results.json.
        gate_metrics: Output metrics for the Kubeflow UI: passed, the candidate's and the champion's OOD average.

    Returns:
        True when the candidate may be registered as champion.
    """
    from autoft.contracts import Results
    from components.gate.decision import Champion, decide
    from components.runtime import check_candidate, load_step_config, open_runs

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    table = Results.load(results.path)
    runs = open_runs(config, mlflow_tracking_uri, output_dir, run_id)
    version = runs.champion(registered_model.strip() or config.tracking.registered_model)
    champion = Champion.from_version(version) if version is not None else None
    decision = decide(
        table, candidate_method, list(gate_baselines), gate_min_gain, champion, config.preset, config.metric
    )
    runs.set_tags(
        runs.parent_id,
        {"autoft.gate_passed": str(decision.passed).lower(), "autoft.gate_reason": decision.reason[:5000]},
    )
    gate_metrics.log_metric("passed", int(decision.passed))
    if decision.candidate_ood_avg is not None:
        gate_metrics.log_metric("candidate_ood_avg", float(decision.candidate_ood_avg))
    if champion is not None and champion.ood_avg is not None:
        gate_metrics.log_metric("champion_ood_avg", float(champion.ood_avg))
    gate_metrics.metadata["reason"] = decision.reason
    print(f"gate {'PASSED' if decision.passed else 'not passed'}: {decision.reason}")
    return decision.passed
