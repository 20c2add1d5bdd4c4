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
    mlflow_run_id: str,
    results: Input[Artifact],
    gate_metrics: Output[Metrics],
) -> bool:
    """Pass when the candidate's OOD average beats every baseline and the registry's champion by gate_min_gain.

    The champion is the version behind the ``champion`` alias of the registered model. One measured on
    another preset or metric (or without an OOD average) cannot be compared, so it blocks the gate
    instead of being replaced blindly. The decision and its reason are tagged on the run's MLflow run,
    so a skipped registration is explained where people compare runs.
    """
    import json
    from pathlib import Path

    from components.gate.decision import Champion, decide
    from components.runtime import check_candidate, load_step_config, open_tracker, start_pipeline_run

    config = load_step_config(config_yaml, config_overrides, methods)
    check_candidate(candidate_method, config.methods)
    table = json.loads(Path(results.path).read_text())
    tracker = open_tracker(config, mlflow_tracking_uri, output_dir)
    start_pipeline_run(tracker, run_id, mlflow_run_id)
    version = tracker.champion(registered_model.strip() or config.tracking.registered_model)
    champion = Champion.from_version(version) if version is not None else None
    decision = decide(
        table, candidate_method, list(gate_baselines), gate_min_gain, champion, config.preset, config.metric
    )
    tracker.set_tags({"autoft.gate_passed": str(decision.passed).lower(), "autoft.gate_reason": decision.reason[:5000]})
    gate_metrics.log_metric("passed", int(decision.passed))
    if decision.candidate_ood_avg is not None:
        gate_metrics.log_metric("candidate_ood_avg", float(decision.candidate_ood_avg))
    if champion is not None and champion.ood_avg is not None:
        gate_metrics.log_metric("champion_ood_avg", float(champion.ood_avg))
    gate_metrics.metadata["reason"] = decision.reason
    print(f"gate {'PASSED' if decision.passed else 'not passed'}: {decision.reason}")
    return decision.passed
