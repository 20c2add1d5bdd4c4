"""evaluate: every method's model on one eval set, or a shard of them (one task per item, in a ParallelFor)."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import STEP_IMAGE


@dsl.component(base_image=STEP_IMAGE, install_kfp_package=False)
def evaluate(
    config_yaml: str,
    config_overrides: list[str],
    methods: list[str],
    eval_set: str,
    candidate_method: str,
    prepared: Input[Dataset],
    zeroshot: Input[Model],
    results: Output[Artifact],
    eval_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    ft: Input[Model] = None,
    ft_wiseft: Input[Model] = None,
    flyp: Input[Model] = None,
    flyp_wiseft: Input[Model] = None,
    autoft: Input[Model] = None,
    autoft_wiseft: Input[Model] = None,
    ft_oodval: Input[Model] = None,
    ft_oodval_wiseft: Input[Model] = None,
    autoft_ce: Input[Model] = None,
    autoft_ce_wiseft: Input[Model] = None,
):
    """Score each method of the run on ``eval_set``; WiSE-FT methods also get their full alpha curve.

    ``eval_set`` may name several sets joined by commas (a shard, pipeline parameter eval_shards): then
    ``results`` is a folder of one JSON per set, the metrics are named ``<set>/<method>.<metric>``, and the
    confusion matrix is the first set's.

    Model inputs are optional because a pipeline compiled for fewer methods wires fewer of them.

    Args:
        config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`).
        config_overrides: KEY=VALUE changes applied on top of config_yaml (dotted keys, YAML values).
        methods: The methods this pipeline was compiled for.
        eval_set: The split to evaluate: id_val, id_test, ood_val or an OOD test shift; or several, comma-joined.
        candidate_method: The method whose confusion matrix the Kubeflow UI shows.
        prepared: The prepare_data output (the split's manifest).
        zeroshot: The zero-shot model.
        results: Output JSON (schema autoft.eval/v1): metrics and confusion matrix per method, alpha curves; for
            several sets a folder of <set>.json.
        eval_metrics: Output metrics for the Kubeflow UI: the run's metric per method.
        confusion: Output confusion matrix of the candidate method for the Kubeflow UI.
        ft: The ft model (cross-entropy, the best ID-val point of its lr grid), when the run has it.
        ft_wiseft: WiSE-FT of ft, when the run has it.
        flyp: The flyp model (contrastive loss, the best ID-val point of its lr grid), when the run has it.
        flyp_wiseft: WiSE-FT of flyp, when the run has it.
        autoft: The AutoFT model (the learned objective), when the run has it.
        autoft_wiseft: WiSE-FT of autoft, when the run has it.
        ft_oodval: The ft_oodval control (cross-entropy, lr and wd searched on OOD-val), when the run has it.
        ft_oodval_wiseft: WiSE-FT of ft_oodval, when the run has it.
        autoft_ce: The autoft_ce control (cross-entropy at AutoFT's lr and wd), when the run has it.
        autoft_ce_wiseft: WiSE-FT of autoft_ce, when the run has it.
    """
    from pathlib import Path

    from autoft.contracts import PreparedData
    from autoft.data.manifests import read_manifest
    from autoft.methods import is_wiseft, model_source
    from autoft.stages import stage_evaluate
    from autoft.threads import configure_threads
    from components.runtime import load_step_config, method_model_folders, shard_sets

    config = load_step_config(config_yaml, config_overrides, methods)
    configure_threads(parallel=None)  # locally the eval sets run side by side; they share the cores
    provided = {
        "ft": ft,
        "ft_wiseft": ft_wiseft,
        "flyp": flyp,
        "flyp_wiseft": flyp_wiseft,
        "autoft": autoft,
        "autoft_wiseft": autoft_wiseft,
        "ft_oodval": ft_oodval,
        "ft_oodval_wiseft": ft_oodval_wiseft,
        "autoft_ce": autoft_ce,
        "autoft_ce_wiseft": autoft_ce_wiseft,
    }
    folders = method_model_folders(
        config.methods, zeroshot.path, {k: v.path if v else None for k, v in provided.items()}
    )
    # The alpha curve interpolates the zero-shot and the fine-tuned weights of each WiSE-FT method's base.
    pairs = {}
    for name in config.methods:
        base = model_source(name).finetuned
        if is_wiseft(name) and base:
            pairs[base] = (Path(zeroshot.path), folders[base])
    sets = shard_sets(eval_set)
    if not sets:
        raise ValueError(f"eval_set {eval_set!r} names no eval set")
    evaluations = []
    for name in sets:
        out = results.path if len(sets) == 1 else str(Path(results.path) / f"{name}.json")
        evaluations.append(stage_evaluate(config, prepared.path, name, folders, out, pairs))
    seconds = round(sum(e.seconds for e in evaluations), 3)
    results.metadata.update({"eval_set": eval_set, "metric": config.metric, "seconds": seconds})
    for name, evaluation in zip(sets, evaluations, strict=True):
        prefix = "" if len(sets) == 1 else f"{name}/"
        for method, row in evaluation.models.items():
            eval_metrics.log_metric(f"{prefix}{method}.{config.metric}", row.value)
    first = evaluations[0]
    class_names = read_manifest(PreparedData.load_from(prepared.path).manifest(sets[0]))["class_names"]
    shown = candidate_method if candidate_method in first.models else config.methods[-1]
    confusion.log_confusion_matrix(list(class_names), first.models[shown].confusion)
    confusion.metadata.update({"method": shown, "eval_set": sets[0]})
