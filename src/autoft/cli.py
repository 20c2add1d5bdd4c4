"""`autoft`: run the whole pipeline, or one step of it, from the command line.

Every command takes ``--preset NAME`` or ``--config FILE`` plus any number of ``--set key=value``
overrides (dotted keys into the config schema; values parsed as YAML).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from autoft.config import AutoFTConfig, ConfigError, apply_overrides, config_to_yaml, read_yaml, validate_config

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "digits"
EXIT_USER_ERROR = 2


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; available: {available_presets()}")
    return path


def resolve_config(args: argparse.Namespace, default_preset: str | None = None) -> AutoFTConfig:
    """--config FILE or --preset NAME (or the default preset), then --set overrides, validated."""
    if getattr(args, "config", None) and getattr(args, "preset", None):
        raise ConfigError("give either --config or --preset, not both")
    source = args.config or (preset_path(args.preset) if args.preset else None)
    if source is None and default_preset:
        source = preset_path(default_preset)
    raw = read_yaml(source) if source else {}
    return validate_config(apply_overrides(raw, args.overrides or []))


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument("--config", type=Path, help="YAML config file (the schema of `autoft config show`)")
    group.add_argument("--preset", help=f"a built-in preset by name: {', '.join(available_presets()) or 'none'}")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override one config value, e.g. --set search.n_trials=20 --set model.head_mode=text",
    )


# ----------------------------------------------------------------------------------------------
# command handlers
# ----------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> None:
    print(config_to_yaml(resolve_config(args, DEFAULT_PRESET)), end="")


def cmd_prepare(args: argparse.Namespace) -> None:
    from autoft.config import save_config
    from autoft.stages import stage_prepare

    config = resolve_config(args)
    save_config(config, Path(args.out) / "config.yaml")
    data = stage_prepare(config, Path(args.out))
    print(f"prepared {data.dataset}: splits {sorted(data.splits)} -> {args.out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from autoft.models.pretrain import foundation_model
    from autoft.paths import default_cache_dir

    resolve_config(args, DEFAULT_PRESET)  # still validates --preset/--set; the model depends on neither
    path = foundation_model(Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    print(f"foundation model: {path}")


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from autoft.stages import stage_zeroshot

    folder = stage_zeroshot(resolve_config(args), Path(args.data), Path(args.out))
    print(f"zero-shot classifier -> {folder}")


def cmd_search(args: argparse.Namespace) -> None:
    from autoft.stages import stage_search

    counts = stage_search(
        resolve_config(args), Path(args.data), Path(args.zeroshot), args.method, args.storage, args.worker_index
    )
    print(f"search {args.method}: {counts['complete']} complete, {counts['fail']} failed, {counts['pruned']} pruned")


def cmd_select_best(args: argparse.Namespace) -> None:
    from autoft.study_stages import stage_select_best

    payload = stage_select_best(resolve_config(args), args.method, args.storage, Path(args.out))
    print(f"best {args.method}: trial {payload['best_trial']} value {payload['best_value']:.4f} -> {args.out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from autoft.stages import hparams_for, stage_finetune

    config = resolve_config(args)
    hparams_files = dict(item.split("=", 1) for item in args.hparams)
    hparams = hparams_for(args.method, {k: Path(v) for k, v in hparams_files.items()})
    summary = stage_finetune(config, Path(args.data), Path(args.zeroshot), hparams, Path(args.out), resume=args.resume)
    print(
        f"fine-tuned {args.method}: best epoch {summary['best_epoch'] + 1}, ID-val {summary['best_id_val']:.4f}, "
        f"WiSE-FT alpha {summary['wiseft']['best_alpha']} -> {args.out}"
    )


def _parse_models(items: list[str]) -> dict[str, Path]:
    models = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep:
            raise ConfigError(f"--model {item!r}: use NAME=FOLDER (a folder saved by finetune or zeroshot)")
        models[name] = Path(folder)
    return models


def cmd_evaluate(args: argparse.Namespace) -> None:
    from autoft.stages import stage_evaluate

    config = resolve_config(args)
    data_dir = Path(args.data)
    eval_set = args.eval_set
    if args.eval_folder or args.eval_csv:
        data_dir, eval_set = _ad_hoc_eval_set(args, _parse_models(args.model))
    results = stage_evaluate(config, data_dir, eval_set, _parse_models(args.model), Path(args.out))
    for name, row in results["models"].items():
        print(f"{name} on {eval_set}: {config.metric} {row['value']:.4f}")


def _ad_hoc_eval_set(args: argparse.Namespace, models: dict[str, Path]) -> tuple[Path, str]:
    """Register an image folder or CSV as an eval set next to the output, labelled by class name."""
    from autoft.data.base import save_file_split
    from autoft.data.ds_generic import load_eval_set
    from autoft.data.registry import PreparedData
    from autoft.models.checkpoint import read_model_card

    card = read_model_card(next(iter(models.values())))
    kind, path = ("folder", args.eval_folder) if args.eval_folder else ("csv", args.eval_csv)
    images = load_eval_set(kind, path, card["class_names"])
    folder = Path(args.out).parent / "adhoc_eval"
    save_file_split(folder, "eval", images)
    PreparedData(
        folder=folder,
        dataset=kind,
        class_names=card["class_names"],
        templates=card["templates"],
        splits={"eval": "eval.json"},
        ood_val_set="",
        ood_tests=["eval"],
        ood_val_indices_hash="",
    ).save()
    return folder, "eval"


def cmd_report(args: argparse.Namespace) -> None:
    from autoft.runner import RunLayout, collect_results

    config = resolve_config(args)
    results = collect_results(config, RunLayout(Path(args.run)), {})
    from autoft.report import format_table

    print(format_table(results))


def _default_run_dir(preset: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{preset}-{stamp}"


def cmd_bench(args: argparse.Namespace) -> None:
    import subprocess

    from autoft.paths import REPO_ROOT

    bench_dir = REPO_ROOT / "bench"
    available = sorted(path.stem for path in bench_dir.glob("*.py")) if bench_dir.is_dir() else []
    if not available:
        raise ConfigError(f"no benchmarks in {bench_dir}: they ship with the source checkout, not the package")
    if args.name not in available:
        raise ConfigError(f"unknown benchmark {args.name!r}; choose one of {available}")
    code = subprocess.call([sys.executable, str(bench_dir / f"{args.name}.py"), *args.bench_args], cwd=REPO_ROOT)
    if code:
        raise SystemExit(code)


def with_shared_local_tracking(config: AutoFTConfig, run_dir: Path) -> AutoFTConfig:
    """Point MLflow at ``<runs folder>/mlflow.db`` when nothing else is configured.

    One SQLite file beside the run folders (``runs/mlflow.db`` for the default ``runs/<preset>-<time>``)
    holds every local run, so ``make mlflow-ui`` compares them; a tracking URI from the config or
    ``$MLFLOW_TRACKING_URI`` wins.
    """
    if config.tracking.mlflow_uri.strip() or os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return config
    shared = config.model_copy(deep=True)
    shared.tracking.mlflow_uri = f"sqlite:///{(run_dir.resolve().parent / 'mlflow.db')}"
    return shared


def cmd_run(args: argparse.Namespace) -> None:
    from autoft.report import format_table

    config = resolve_config(args, DEFAULT_PRESET)
    run_dir = Path(args.out) if args.out else _default_run_dir(config.preset)
    config = with_shared_local_tracking(config, run_dir)
    if args.runner == "inprocess":
        from autoft.runner import run_inprocess

        results = run_inprocess(config, run_dir)
    else:
        # The KFP side lives in the top-level `pipeline` package; the library itself never imports kfp.
        from pipeline.local_run import run_with_kfp_local

        results = run_with_kfp_local(config, run_dir)
    print()
    print(format_table(results))
    print(f"\nrun folder: {run_dir}  (results.json, report.md, report.html, plots/)")


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace], None]


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """The per-step commands; registered both at the top level and under `autoft step`."""

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        _add_config_args(parser)
        parser.set_defaults(handler=handler)
        return parser

    p = add("prepare", cmd_prepare, "build split manifests and the OOD-val subset into --out")
    p.add_argument("--out", required=True, help="prepared-data folder (data.json + split manifests)")

    p = add("zeroshot", cmd_zeroshot, "build the zero-shot CLIP classifier (weights + model card)")
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--out", required=True, help="model folder to write")

    p = add("search", cmd_search, "run one search worker on a shared Optuna study (total budget across workers)")
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--zeroshot", required=True, help="zero-shot model folder")
    p.add_argument("--method", default="autoft", help="autoft | ft | flyp | ft_oodval")
    p.add_argument("--storage", required=True, help="journal file path or Optuna RDB URL (postgresql://...)")
    p.add_argument("--worker-index", type=int, default=0, help="distinct per worker: seeds its sampler and data")

    p = add("select-best", cmd_select_best, "write the best trial's effective hyperparameters to --out")
    p.add_argument("--method", default="autoft")
    p.add_argument("--storage", required=True, help="the study's storage")
    p.add_argument("--out", required=True, help="JSON file to write")

    p = add("finetune", cmd_finetune, "final fine-tuning with searched hyperparameters, then the WiSE-FT sweep")
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--zeroshot", required=True, help="zero-shot model folder")
    p.add_argument("--method", default="autoft")
    p.add_argument(
        "--hparams",
        action="append",
        required=True,
        metavar="METHOD=FILE",
        help="select-best output per method (controls such as autoft_ce read autoft's)",
    )
    p.add_argument("--out", required=True, help="output folder (model/, wiseft/, train/, wiseft.json)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in --out")

    p = add("evaluate", cmd_evaluate, "evaluate saved models on one eval set (or any image folder / CSV)")
    p.add_argument("--data", default="", help="prepared-data folder (for --eval-set)")
    p.add_argument("--eval-set", default="id_test", help="split name in data.json (id_val, id_test, a shift, ...)")
    p.add_argument("--eval-folder", help="an image folder with one subfolder per class name")
    p.add_argument("--eval-csv", help="a CSV manifest with columns path,label (label = class name or index)")
    p.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER", help="a saved model")
    p.add_argument("--out", required=True, help="JSON file with metrics and confusion matrices")

    p = add("report", cmd_report, "assemble results.json, report.md/html and plots from a run folder")
    p.add_argument("--run", required=True, help="run folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoft",
        description="AutoFT: learn a robust fine-tuning objective for CLIP by searching loss weights and "
        "optimizer hyperparameters on a small OOD validation set, as a Kubeflow pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  autoft run                          # the built-in digits benchmark, locally\n"
        "  autoft run --preset smoke           # every step end to end on tiny budgets (~3 min)\n"
        "  autoft run --set search.n_trials=50 --set finetune.epochs=5\n"
        "  autoft config show --preset fmow    # the resolved configuration\n"
        "  autoft bench robustness --seeds 0 1 # a benchmark from bench/ (--help after its name)\n",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole pipeline locally (kfp.local) and print the results table")
    _add_config_args(run)
    run.add_argument("--out", help="run folder (default: runs/<preset>-<timestamp>)")
    run.add_argument(
        "--runner",
        choices=["kfp", "inprocess"],
        default="kfp",
        help="kfp: the compiled pipeline through kfp.local (each step a subprocess); inprocess: the same stages "
        "in this process (debugging)",
    )
    run.set_defaults(handler=cmd_run)

    config = sub.add_parser("config", help="show the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    _add_config_args(show)
    show.set_defaults(handler=cmd_config_show)

    pretrain = sub.add_parser("pretrain", help="build (or reuse) the built-in digits foundation model")
    _add_config_args(pretrain)
    pretrain.add_argument("--cache-dir", help="where to cache it (default: $AUTOFT_CACHE or .cache/autoft)")
    pretrain.set_defaults(handler=cmd_pretrain)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark from the checkout's bench/ folder (robustness, loss_terms)",
        description="Run bench/NAME.py with this Python; every argument after NAME goes to the benchmark.",
    )
    bench.add_argument("name", help="benchmark name: a file bench/NAME.py")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(handler=cmd_bench)

    _add_stage_commands(sub)
    step = sub.add_parser("step", help="one pipeline step, as a container runs it (same commands as above)")
    _add_stage_commands(step.add_subparsers(dest="step", metavar="STEP", required=True))

    for extension in _extensions():
        extension(sub)
    return parser


def _extensions() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Commands that live with the pipeline package (compile, submit), which imports kfp."""
    found = []
    for module_name in ("pipeline.cli",):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as error:
            if error.name not in (module_name, module_name.split(".")[0]):
                raise
            continue
        found.append(module.register)
    return found


USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, FileNotFoundError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from autoft.data.base import DataError
    from autoft.models.checkpoint import CheckpointError
    from autoft.search.study import SearchFailed
    from autoft.storage import StorageError

    return (*USER_ERRORS, DataError, CheckpointError, SearchFailed, StorageError, ConnectionError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Root at WARNING: open_clip logs chatty INFO lines on the root logger; ours go through "autoft".
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    logging.getLogger("autoft").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not hasattr(args, "handler"):
        parser.print_help()
        return EXIT_USER_ERROR
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    try:
        args.handler(args)
    except _user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
