"""evaluate: every method's model on one eval set (one task per eval set, in a ParallelFor)."""

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

    Writes the per-method metrics and confusion matrices as JSON (what report collects), the headline
    metric per method as ``Metrics``, and the candidate method's confusion matrix for the Kubeflow UI.
    Model inputs are optional because a pipeline compiled for fewer methods wires fewer of them.
    """
    from autoft.data.base import read_manifest
    from autoft.data.registry import PreparedData
    from autoft.methods import base_of, is_wiseft
    from autoft.stages import stage_evaluate
    from components.runtime import load_step_config, method_model_folders, stopwatch

    config = load_step_config(config_yaml, config_overrides, methods)
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
        config.methods, zeroshot.path, {name: art.path if art is not None else None for name, art in provided.items()}
    )
    # The alpha curve interpolates the zero-shot and the fine-tuned weights of each WiSE-FT method's base.
    pairs = {base_of(m): (folders["zeroshot"], folders[base_of(m)]) for m in config.methods if is_wiseft(m)}
    with stopwatch() as timing:
        payload = stage_evaluate(config, prepared.path, eval_set, folders, results.path, pairs)
    results.metadata.update({"eval_set": eval_set, "metric": config.metric, "seconds": timing["seconds"]})
    for method, row in payload["models"].items():
        eval_metrics.log_metric(f"{method}.{config.metric}", float(row["value"]))
    class_names = read_manifest(PreparedData.load(prepared.path).manifest(eval_set))["class_names"]
    shown = candidate_method if candidate_method in payload["models"] else config.methods[-1]
    matrix = [[int(count) for count in row] for row in payload["models"][shown]["confusion"]]
    confusion.log_confusion_matrix(list(class_names), matrix)
    confusion.metadata["method"] = shown
