"""The AutoFT pipeline DSL: prepare -> zero-shot -> per searched method: study, search workers, best -> fine-tune;
per conventional baseline (ft, flyp): one fine-tune per lr of its grid, best ID-val point -> evaluate every
eval set -> report -> gate -> register; an exit handler cleans up.

The methods are fixed when the pipeline is built (one named branch each, so the DAG stays static and
readable in the Kubeflow UI); everything else about a run is a pipeline parameter.
"""

import json

from components.build_zeroshot.component import build_zeroshot
from components.create_study.component import create_study
from components.evaluate.component import evaluate
from components.finalize.component import finalize
from components.finetune.component import finetune
from components.finetune_grid_point.component import finetune_grid_point
from components.gate.component import gate
from components.grid_points.component import grid_points
from components.prepare_data.component import prepare_data
from components.register.component import register
from components.report.component import report
from components.runtime import CANDIDATE_METHODS
from components.search_worker.component import search_worker
from components.select_best.component import select_best
from components.select_grid.component import select_grid
from kfp import dsl
from kfp.dsl.graph_component import GraphComponent

from autoft.config import AutoFTConfig
from autoft.errors import ConfigError
from autoft.methods import (
    finetuned_methods,
    grid_methods,
    hparams_source,
    method_problems,
    model_source,
    searched_methods,
)
from pipeline.cluster import ClusterSettings, gpu_task, step, with_datasets, with_mlflow, with_study_storage

PIPELINE_NAME = "autoft"
DEFAULT_SEARCH_WORKERS = 2
DEFAULT_GATE_BASELINES = ["zeroshot", "ft", "flyp"]


def config_parameter(config: AutoFTConfig) -> str:
    """The config as the value of the ``config_yaml`` parameter: one line of JSON, which is valid YAML.

    The KFP compiler copies each parameter's default into the IR's header comment as is; a multi-line
    default would end that comment early and make the compiled file invalid YAML.
    """
    return json.dumps(json.loads(config.model_dump_json()), separators=(", ", ": "))


def default_candidate(methods: list[str]) -> str:
    """The model the gate judges: AutoFT itself when run, else none (a run without AutoFT registers nothing)."""
    return next((m for m in CANDIDATE_METHODS if m in methods), "")


def build_pipeline(config: AutoFTConfig, settings: ClusterSettings | None = None) -> GraphComponent:
    """The pipeline for ``config.methods``, with ``config`` as the default of its config_yaml parameter."""
    settings = settings or ClusterSettings()
    methods = list(config.methods)
    problems = method_problems(methods)
    if problems:
        raise ConfigError("; ".join(problems))
    searched = searched_methods(methods)
    finetuned = finetuned_methods(methods)
    grid_tuned = grid_methods(methods)
    has_candidate = bool(default_candidate(methods))
    parallelism = settings.search_parallelism

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="AutoFT: learn a robust fine-tuning objective for CLIP by searching loss weights, lr and "
        "weight decay on a small OOD validation set; compared with zero-shot, FT, FLYP, controls and WiSE-FT.",
    )
    def autoft_pipeline(
        config_yaml: str = config_parameter(config),
        config_overrides: list = [],  # noqa: B006 - KFP reads parameter defaults from the signature
        search_workers: int = DEFAULT_SEARCH_WORKERS,
        study_storage: str = "",
        mlflow_tracking_uri: str = "",
        candidate_method: str = default_candidate(methods),
        gate_baselines: list = DEFAULT_GATE_BASELINES,
        gate_min_gain: float = 0.0,
        registered_model: str = "",
        output_dir: str = "",
        checkpoint_root: str = "",
        eval_shards: int = 0,
    ):
        """AutoFT on Kubeflow: search, fine-tune, evaluate on every shift, report, and register a winner.

        Args:
            config_yaml: The run's AutoFT config as YAML or JSON (the schema of `autoft config show`). The default
                is the preset this pipeline was compiled from; `methods`, if given, must be the compiled branches.
            config_overrides: Changes applied on top of config_yaml, as a JSON list of KEY=VALUE strings with dotted
                keys and YAML values, e.g. ["search.n_trials=50", "finetune.epochs=5"].
            search_workers: Parallel search workers per searched method. They share one Optuna study and together
                run search.n_trials trials; at most the compiled parallelism limit run at once.
            study_storage: Optuna storage shared by the workers. Empty uses search.storage from the config, then
                AUTOFT_OPTUNA_STORAGE from the secret autoft-pipeline-env. Otherwise an RDB URL without a password,
                or a folder all steps share (kfp.local).
            mlflow_tracking_uri: MLflow tracking URI. Empty uses tracking.mlflow_uri from the config, then
                MLFLOW_TRACKING_URI from the ConfigMap autoft-pipeline-config, then SQLite in output_dir.
            candidate_method: The model the gate judges and, if it passes, registers as champion. One of autoft or
                autoft_wiseft; empty when the pipeline runs no AutoFT.
            gate_baselines: Methods whose OOD average the candidate must beat, e.g. ["zeroshot", "ft", "flyp"]. The
                current champion in the MLflow registry is always added when comparable.
            gate_min_gain: Margin, as a fraction, by which the candidate's OOD average must exceed the best baseline
                and the champion. For example 0.005 means 0.5 points.
            registered_model: Name of the model in the MLflow registry. Empty uses tracking.registered_model from
                the config.
            output_dir: Optional local or mounted folder that also receives results.json, report.md, report.html,
                plots and pipeline_status.json. kfp.local runs set it to the run folder.
            checkpoint_root: Durable storage for fine-tuning checkpoints, e.g. gs://BUCKET/autoft-checkpoints: each
                epoch is saved under <root>/<run id>/<method>, so a retried or preempted fine-tune resumes from its
                last epoch. Empty uses AUTOFT_CHECKPOINT_ROOT from the ConfigMap autoft-pipeline-config, then
                output_dir/checkpoints; with neither, a retry starts from epoch 0.
            eval_shards: Evaluate tasks. 0 runs one per eval set (each in its own pod, side by side); N deals the
                eval sets into N tasks, which saves process start-ups where tasks share one machine (kfp.local).
        """
        common = {"config_yaml": config_yaml, "config_overrides": config_overrides, "methods": methods}
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        # Steps that add to the run's MLflow tree find it by the KFP run id (components/tracking.py).
        tracked = {"run_id": run_id, "mlflow_tracking_uri": mlflow_tracking_uri, "output_dir": output_dir}

        cleanup = finalize(
            **common,
            run_id=run_id,
            study_storage=study_storage,
            mlflow_tracking_uri=mlflow_tracking_uri,
            output_dir=output_dir,
        )
        with_mlflow(with_study_storage(step(cleanup, "finalize (exit handler)", settings.light, settings)))

        with dsl.ExitHandler(cleanup, name="autoft-run"):
            prepare = prepare_data(
                **common,
                **tracked,
                candidate_method=candidate_method,
                step_image=settings.step_image,
                eval_shards=eval_shards,
            )
            with_mlflow(with_datasets(step(prepare, "prepare data", settings.prepare, settings), settings))
            prepared = prepare.outputs["prepared"]

            zeroshot_task = build_zeroshot(**common, **tracked, prepared=prepared)
            with_mlflow(with_datasets(step(zeroshot_task, "zero-shot model", settings.zeroshot, settings), settings))
            zeroshot = zeroshot_task.outputs["zeroshot"]

            # Search: one study per searched method, N workers on it, then its best hyperparameters.
            best: dict[str, dsl.PipelineTask] = {}
            for method in searched:
                study = create_study(
                    **common, **tracked, method=method, study_storage=study_storage, search_workers=search_workers
                )
                with_mlflow(with_study_storage(step(study, f"create study: {method}", settings.light, settings)))
                with dsl.ParallelFor(study.output, parallelism=parallelism, name=f"search-{method}") as worker:
                    search = search_worker(
                        **common,
                        **tracked,
                        method=method,
                        worker_index=worker.worker_index,
                        workers=worker.workers,
                        storage=worker.storage,
                        study_name=worker.study_name,
                        prepared=prepared,
                        zeroshot=zeroshot,
                    )
                    with_mlflow(with_study_storage(step(search, f"search worker: {method}", settings.search, settings)))
                    gpu_task(search, settings, settings.search)
                best[method] = select_best(**common, method=method, study_storage=study_storage, run_id=run_id)
                with_study_storage(step(best[method], f"best hyperparameters: {method}", settings.light, settings))
                best[method].after(search)

            # Fine-tuning: ft and flyp as conventional baselines (a full fine-tune per lr of their grid, side by
            # side, then the best ID-val point); the others from their own search, or a control from the search
            # it borrows.
            tuned: dict[str, dsl.PipelineTask] = {}
            for method in grid_tuned:
                lrs = grid_points(**common, method=method)
                step(lrs, f"lr grid: {method}", settings.light, settings)
                with dsl.ParallelFor(lrs.output, parallelism=parallelism, name=f"grid-{method}") as lr:
                    point = finetune_grid_point(
                        **common,
                        **tracked,
                        method=method,
                        lr=lr,
                        prepared=prepared,
                        zeroshot=zeroshot,
                        checkpoint_root=checkpoint_root,
                    )
                    with_mlflow(step(point, f"fine-tune: {method} (one lr)", settings.finetune, settings))
                    gpu_task(point, settings, settings.finetune)
                tuned[method] = select_grid(
                    **common, **tracked, method=method, points=dsl.Collected(point.outputs["point"])
                )
                with_mlflow(step(tuned[method], f"best lr: {method}", settings.light, settings))
            for method in (m for m in finetuned if m not in grid_tuned):
                tuned[method] = finetune(
                    **common,
                    **tracked,
                    method=method,
                    prepared=prepared,
                    zeroshot=zeroshot,
                    hparams=best[hparams_source(method)].outputs["best_hparams"],
                    checkpoint_root=checkpoint_root,
                )
                with_mlflow(step(tuned[method], f"fine-tune: {method}", settings.finetune, settings))
                gpu_task(tuned[method], settings, settings.finetune)

            # Each method's model: a fine-tune step's output (WiSE-FT variants take its interpolated model).
            models = {}
            for method in methods:
                source = model_source(method)
                if source.finetuned:
                    output = "wiseft_model" if source.kind == "wiseft" else "model"
                    models[method] = tuned[source.finetuned].outputs[output]

            # Evaluation: every method on every eval set (ID val/test, OOD-val, each OOD test shift), one task per
            # set or per shard of sets (eval_shards).
            with dsl.ParallelFor(prepare.outputs["Output"], name="eval-sets") as eval_set:
                evaluation = evaluate(
                    **common,
                    eval_set=eval_set,
                    candidate_method=candidate_method,
                    prepared=prepared,
                    zeroshot=zeroshot,
                    **models,
                )
                step(evaluation, "evaluate", settings.evaluation, settings)
                gpu_task(evaluation, settings, settings.evaluation)

            summary = report(
                **common,
                **tracked,
                prepared=prepared,
                evals=dsl.Collected(evaluation.outputs["results"]),
                **{f"{m}_search": best[m].outputs["best_hparams"] for m in searched},
                **{f"{m}_finetune": tuned[m].outputs["summary"] for m in finetuned},
            )
            with_mlflow(step(summary, "report", settings.light, settings))

            if has_candidate:
                decision = gate(
                    **common,
                    **tracked,
                    candidate_method=candidate_method,
                    gate_baselines=gate_baselines,
                    gate_min_gain=gate_min_gain,
                    registered_model=registered_model,
                    results=summary.outputs["results"],
                )
                with_mlflow(step(decision, "gate: beats baselines and champion?", settings.light, settings))
                # A single-output step's `Output` in a comparison with a constant: the form KFP conditions
                # take (and the one kfp.local can resolve); `is True` would not build a condition.
                with dsl.If(decision.outputs["Output"] == True, name="gate-passed"):  # noqa: E712
                    registration = register(
                        **common,
                        **tracked,
                        candidate_method=candidate_method,
                        registered_model=registered_model,
                        gate_min_gain=gate_min_gain,
                        results=summary.outputs["results"],
                    )
                    with_mlflow(step(registration, "register champion", settings.register, settings))

    return autoft_pipeline
