"""`autoft`: run the whole pipeline, or one step of it, from the command line.

Every command takes ``--preset NAME`` or ``--config FILE`` plus any number of ``--set key=value``
overrides (dotted keys into the config schema; values parsed as YAML). Commands that need Kubeflow's
SDK (``compile``, ``submit``) and the ``kfp`` runner of ``autoft run`` come from plugins registered
under the entry-point groups ``autoft.commands`` and ``autoft.runners`` (the ``pipeline`` package);
the library itself never imports kfp.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from autoft.boundary import DISK_ERRORS, EXIT_FAILURE, EXIT_USER_ERROR, describe

__all__ = ["DISK_ERRORS", "EXIT_FAILURE", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "main"]
from autoft.config import (
    DEFAULT_PRESET,
    AutoFTConfig,
    available_presets,
    config_to_yaml,
    parse_assignments,
    resolve_config,
)
from autoft.errors import ConfigError, caused_by_interrupt
from autoft.outputs import check_output, output_lock, refuse_finished
from autoft.termination import EXIT_TERMINATED, Terminated, handle_sigterm, interrupt_behind
from autoft.urls import check_location

EXIT_INTERRUPTED = 130
COMMAND_PLUGINS = "autoft.commands"
RUNNER_PLUGINS = "autoft.runners"
Handler = Callable[[argparse.Namespace], None]
Runner = Callable[[AutoFTConfig, Path], Any]


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config`` / ``--preset`` / ``--set``: how every command gets its configuration."""
    group = parser.add_argument_group("configuration")
    source = group.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, help="YAML config file (the schema of `autoft config show`)")
    source.add_argument("--preset", help=f"a built-in preset by name: {', '.join(available_presets())}")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="override one config value, e.g. --set search.n_trials=20 --set model.head_mode=text",
    )


def config_from_args(args: argparse.Namespace, default_preset: str | None = None) -> AutoFTConfig:
    return resolve_config(
        preset=args.preset, config_file=args.config, overrides=args.overrides, default_preset=default_preset
    )


# ----------------------------------------------------------------------------------------------
# command handlers
# ----------------------------------------------------------------------------------------------


def cmd_config_show(args: argparse.Namespace) -> None:
    print(config_to_yaml(config_from_args(args, DEFAULT_PRESET)), end="")


def cmd_prepare(args: argparse.Namespace) -> None:
    from autoft.config import save_config
    from autoft.stages import stage_prepare

    config = config_from_args(args)
    sources = {f"eval set {item.name}": item.path for item in config.data.eval_sets}
    out = check_output(args.out, "folder", {"data.root": config.data.root, **sources})
    refuse_finished(out, "data.json", "prepared data", args.overwrite)
    with output_lock(out):
        data = stage_prepare(config, out)
        save_config(config, out / "config.yaml")
    print(f"prepared {data.dataset}: splits {sorted(data.splits)} -> {args.out}")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from autoft.models.pretrain import foundation_model
    from autoft.paths import default_cache_dir

    config_from_args(args, DEFAULT_PRESET)  # validates --preset/--set; the model depends on neither
    cache = check_output(args.cache_dir, "folder", where="--cache-dir") if args.cache_dir else default_cache_dir()
    path = foundation_model(cache)
    print(f"foundation model: {path}")


def cmd_zeroshot(args: argparse.Namespace) -> None:
    from autoft.stages import stage_zeroshot

    config = config_from_args(args)
    out = check_output(args.out, "folder", {"--data": args.data, "model.pretrained": _local(config.model.pretrained)})
    refuse_finished(out, "model_card.json", "a saved model", args.overwrite)
    with output_lock(out):
        folder = stage_zeroshot(config, Path(args.data), out)
    print(f"zero-shot classifier -> {folder}")


def cmd_search(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    config.check_method(args.method, purpose="search")
    from autoft.stages import stage_search

    counts = stage_search(
        config, Path(args.data), Path(args.zeroshot), args.method, args.storage, args.worker_index, args.workers
    )
    print(f"search {args.method}: {counts['complete']} complete, {counts['fail']} failed, {counts['pruned']} pruned")


def cmd_select_best(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    config.check_method(args.method, purpose="search")
    from autoft.study_stages import stage_select_best

    out = check_output(args.out, "file", {"--storage": args.storage})
    refuse_finished(out, "", "a search result", args.overwrite)
    with output_lock(out):
        result = stage_select_best(config, args.method, args.storage, out)
    print(f"best {args.method}: trial {result.best_trial} value {result.best_value:.4f} -> {args.out}")


def cmd_finetune(args: argparse.Namespace) -> None:
    from autoft.distributed import resolve_nproc

    nproc = resolve_nproc(args.nproc)  # a bad value fails before any compute
    config = config_from_args(args)
    config.check_method(args.method, purpose="finetune")
    from autoft.baselines import grid_hparams
    from autoft.methods import BASE_METHODS, searched_methods
    from autoft.stages import finetune_hparams, stage_finetune

    search_results: dict[str, str] = {}
    if BASE_METHODS[args.method].grid:
        # A conventional baseline: one grid point per call (`autoft step select-grid` keeps the best).
        if args.grid_lr is None or args.hparams:
            raise ConfigError(
                f"--method {args.method} is fine-tuned over baselines.lr_grid {config.baseline_lr_grid}: give "
                "--grid-lr LR (one point of it) and no --hparams"
            )
        hparams = grid_hparams(config, args.method, args.grid_lr)
    else:
        if args.grid_lr is not None or not args.hparams:
            raise ConfigError(
                f"--method {args.method} fine-tunes with searched hyperparameters: give --hparams, not --grid-lr"
            )
        search_results = _named_paths(args.hparams, "--hparams", "autoft=run/search/autoft.json")
        searched = searched_methods(config.methods)
        unknown = sorted(set(search_results) - set(searched))
        if unknown:
            raise ConfigError(f"--hparams names {unknown}, which this config does not search; searched: {searched}")
        hparams = finetune_hparams(args.method, {k: Path(v) for k, v in search_results.items()})
    if args.checkpoint_root:
        check_location(args.checkpoint_root, "--checkpoint-root", gcs=True)
    inputs = {"--data": args.data, "--zeroshot": args.zeroshot, "--checkpoint-root": args.checkpoint_root}
    out = check_output(args.out, "folder", {**inputs, **{f"--hparams {k}": v for k, v in search_results.items()}})
    if args.resume and args.overwrite:
        raise ConfigError("--resume keeps what --out holds and --overwrite replaces it: give one of them")
    if not args.resume:
        refuse_finished(
            out, "finetune.json", "a finished fine-tune", args.overwrite, "--resume keeps it (same settings)"
        )
        refuse_finished(out, "train", "an unfinished fine-tune", args.overwrite, "--resume continues it")
    finished = args.resume and (out / "finetune.json").is_file()
    from autoft.runner import run_status

    # The folder says running/succeeded/failed/interrupted/terminated.
    with output_lock(out), run_status(out):
        summary = stage_finetune(
            config,
            Path(args.data),
            Path(args.zeroshot),
            args.method,
            hparams,
            out,
            resume=args.resume,
            nproc=nproc,
            durable_root=args.checkpoint_root,
        )
    if finished:
        print(f"fine-tuning {args.method} had already finished in {args.out}: nothing to resume")
    print(
        f"fine-tuned {args.method}: best epoch {summary.best_epoch + 1}, ID-val {summary.best_id_val:.4f}, "
        f"WiSE-FT alpha {summary.wiseft.best_alpha} -> {args.out}"
    )


def cmd_select_grid(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    from autoft.baselines import stage_select_grid

    inputs = {f"--point {index}": folder for index, folder in enumerate(args.point)}
    out = check_output(args.out, "folder", inputs)
    refuse_finished(out, "finetune.json", "a chosen grid point", args.overwrite)
    with output_lock(out):
        summary = stage_select_grid(config, args.method, [Path(folder) for folder in args.point], out)
    print(
        f"{args.method}: chose lr {summary.hparams.lr:g} (ID-val {summary.best_id_val:.4f}, epoch "
        f"{summary.best_epoch + 1}) of {len(summary.grid)} grid points -> {args.out}"
    )


def cmd_evaluate(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    models = {name: Path(folder) for name, folder in _named_paths(args.model, "--model", "ft=run/ft").items()}
    from autoft.stages import stage_evaluate

    inputs = {f"--model {name}": folder for name, folder in models.items()}
    inputs.update({"--data": args.data, "--eval-folder": args.eval_folder, "--eval-csv": args.eval_csv})
    out = check_output(args.out, "file", inputs)
    refuse_finished(out, "", "an evaluation", args.overwrite)
    data_dir, eval_set = Path(args.data), args.eval_set
    with output_lock(out), tempfile.TemporaryDirectory(prefix="autoft-eval-") as scratch:
        if args.eval_folder or args.eval_csv:
            # The ad-hoc eval set's manifest lives only as long as this command: no folder beside --out.
            data_dir, eval_set = _ad_hoc_eval_set(args, models, Path(scratch))
        elif not args.data:
            raise ConfigError("give --data (a prepared-data folder) with --eval-set, or --eval-folder / --eval-csv")
        results = stage_evaluate(config, data_dir, eval_set, models, out)
    for name, row in results.models.items():
        print(f"{name} on {eval_set}: {config.metric} {row.value:.4f}")


def _named_paths(items: list[str], what: str, example: str) -> dict[str, str]:
    """``NAME=PATH`` arguments; an empty path would silently mean the current folder."""
    named = parse_assignments(items, what, example)
    empty = [name for name, path in named.items() if not path.strip()]
    if empty:
        raise ConfigError(f"{what} {empty[0]}= names no path; write e.g. {example}")
    return named


def _local(location: str) -> str | None:
    """A config location that names a local path, or None (a tag, a gs:// URI, builtin:...)."""
    return location if location and ("/" in location or Path(location).exists()) and ":" not in location else None


def _ad_hoc_eval_set(args: argparse.Namespace, models: dict[str, Path], folder: Path) -> tuple[Path, str]:
    """Register an image folder or CSV as an eval set in ``folder`` (a scratch folder), labelled by class name."""
    from autoft.contracts import PreparedData
    from autoft.data.ds_generic import load_eval_set
    from autoft.data.manifests import save_file_split
    from autoft.models.checkpoint import read_model_card

    card = read_model_card(next(iter(models.values())))
    kind, path = ("folder", args.eval_folder) if args.eval_folder else ("csv", args.eval_csv)
    images = load_eval_set(kind, path, card["class_names"], allow_outside_paths=args.allow_outside_paths)
    save_file_split(folder, "eval", images)
    PreparedData(
        dataset=kind,
        class_names=card["class_names"],
        templates=card["templates"],
        splits={"eval": "eval.json"},
        ood_val_set="",
        ood_tests=["eval"],
        ood_val_indices_hash="",
    ).save_in(folder)
    return folder, "eval"


def cmd_report(args: argparse.Namespace) -> None:
    from autoft.report import format_table
    from autoft.runner import RunLayout, collect_results

    print(format_table(collect_results(config_from_args(args), RunLayout(Path(args.run)), {})))


def _default_run_dir(preset: str) -> Path:
    return Path("runs") / f"{preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


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


def runners() -> dict[str, Runner]:
    """``inprocess`` (this library) plus the runners plugins register (``kfp`` from the pipeline package)."""
    from autoft.runner import run_inprocess

    found: dict[str, Runner] = {"inprocess": run_inprocess}
    for entry in entry_points(group=RUNNER_PLUGINS):
        found[entry.name] = entry.load()
    return found


def process_seconds() -> float:
    """Seconds since this process started (the interpreter's start-up and imports included)."""
    import psutil

    return time.time() - psutil.Process().create_time()


def cmd_run(args: argparse.Namespace) -> None:
    from autoft.report import format_table

    available = runners()
    if args.runner not in available:
        raise ConfigError(f"--runner {args.runner!r} is not installed; available: {sorted(available)}")
    config = config_from_args(args, DEFAULT_PRESET)
    from autoft.runner import run_status
    from autoft.stages import resolve_device

    resolve_device(config)  # device=cuda without a GPU fails here, not in the third step
    run_dir = check_output(args.out, "folder") if args.out else _default_run_dir(config.preset)
    refuse_finished(run_dir, "results.json", "a finished run", args.overwrite)
    config = with_shared_local_tracking(config, run_dir)
    startup = process_seconds()
    with output_lock(run_dir), run_status(run_dir):
        results = available[args.runner](config, run_dir)
    # The whole command, its start-up included (Python, imports, config): what a user waits for.
    results.timing_s.update({"startup": round(startup, 3), "total": round(process_seconds(), 3)})
    results.save(run_dir / "results.json")
    print()
    print(format_table(results))
    print(f"\nrun folder: {run_dir}  (results.json, report.md, report.html, plots/)")


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


def add_overwrite(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} already in --out (otherwise refused)")


def _add_stage_commands(sub: argparse._SubParsersAction) -> None:
    """The per-step commands; registered both at the top level and under `autoft step`."""

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        add_config_arguments(parser)
        parser.set_defaults(handler=handler)
        return parser

    p = add("prepare", cmd_prepare, "build split manifests and the OOD-val subset into --out")
    p.add_argument("--out", required=True, help="prepared-data folder (data.json + split manifests)")
    add_overwrite(p, "prepared data")

    p = add("zeroshot", cmd_zeroshot, "build the zero-shot CLIP classifier (weights + model card)")
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--out", required=True, help="model folder to write")
    add_overwrite(p, "a saved model")

    p = add("search", cmd_search, "run one search worker on a shared Optuna study (total budget across workers)")
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--zeroshot", required=True, help="zero-shot model folder")
    p.add_argument("--method", default="autoft", help="a searched method of the config: autoft | ft_oodval")
    p.add_argument("--storage", required=True, help="a *.journal file or an Optuna RDB URL (postgresql://...)")
    p.add_argument("--workers", type=int, default=1, help="how many workers share the study's total budget")
    p.add_argument(
        "--worker-index",
        type=int,
        default=0,
        help="this worker's number, 0..workers-1: its share of the budget, sampler seed and batch order; start "
        "it again with the same index after a crash and it finishes its share",
    )

    p = add("select-best", cmd_select_best, "write the best trial's effective hyperparameters to --out")
    p.add_argument("--method", default="autoft", help="a searched method of the config")
    p.add_argument("--storage", required=True, help="the study's storage (it must exist)")
    p.add_argument("--out", required=True, help="JSON file to write (schema autoft.search/v1)")
    add_overwrite(p, "a search result")

    p = add(
        "finetune",
        cmd_finetune,
        "final fine-tuning with searched hyperparameters (or one lr grid point of ft/flyp), then the WiSE-FT alpha",
    )
    p.add_argument("--data", required=True, help="prepared-data folder")
    p.add_argument("--zeroshot", required=True, help="zero-shot model folder")
    p.add_argument("--method", default="autoft", help="a fine-tuned method of the config")
    p.add_argument(
        "--hparams",
        action="append",
        default=[],
        metavar="METHOD=FILE",
        help="select-best output per method (controls such as autoft_ce read autoft's); not for ft/flyp",
    )
    p.add_argument(
        "--grid-lr",
        type=float,
        default=None,
        metavar="LR",
        help="ft/flyp only: the lr of this grid point (one of baselines.lr_grid); select-grid keeps the best",
    )
    p.add_argument("--out", required=True, help="output folder (model/, wiseft/, train/, finetune.json)")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in --out")
    add_overwrite(p, "a finished or unfinished fine-tune (without it such an --out is refused)")
    p.add_argument(
        "--checkpoint-root",
        default="",
        metavar="URI",
        help="also keep each epoch's checkpoint here (gs://... or a folder); started again with the same root "
        "and an empty --out (another machine), it resumes from the last saved epoch",
    )
    p.add_argument(
        "--nproc",
        default="1",
        help="processes on this node (torchrun + DDP): a number, or 'auto' = one per visible GPU (default 1)",
    )

    p = add("select-grid", cmd_select_grid, "keep the best ID-val grid point of ft/flyp (ties: the smaller lr)")
    p.add_argument("--method", default="ft", help="a grid-tuned method of the config: ft | flyp")
    p.add_argument(
        "--point", action="append", required=True, metavar="FOLDER", help="a finetune --grid-lr output; one per lr"
    )
    p.add_argument("--out", required=True, help="output folder (model/, wiseft/, finetune.json with every point)")
    add_overwrite(p, "a chosen grid point")

    p = add("evaluate", cmd_evaluate, "evaluate saved models on one eval set (or any image folder / CSV)")
    p.add_argument("--data", default="", help="prepared-data folder (for --eval-set)")
    p.add_argument("--eval-set", default="id_test", help="split name in data.json (id_val, id_test, a shift, ...)")
    adhoc = p.add_mutually_exclusive_group()
    adhoc.add_argument("--eval-folder", help="an image folder with one subfolder per class name")
    adhoc.add_argument("--eval-csv", help="a CSV manifest with columns path,label (label = class name)")
    p.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let --eval-csv rows name images outside the CSV's folder (absolute or ../ paths)",
    )
    p.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER", help="a saved model")
    p.add_argument("--out", required=True, help="JSON file with metrics and confusion matrices")
    add_overwrite(p, "an evaluation")

    p = add("report", cmd_report, "assemble results.json, report.md/html and plots from a run folder")
    p.add_argument("--run", required=True, help="run folder")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoft",
        description="AutoFT: learn a robust fine-tuning objective for CLIP by searching loss weights and "
        "optimizer hyperparameters on a small OOD validation set, as a Kubeflow pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples:\n  autoft run                          # the built-in digits benchmark, locally\n"
        "  autoft run --preset smoke           # every step end to end on tiny budgets\n"
        "  autoft run --set search.n_trials=50 --set finetune.epochs=5\n"
        "  autoft config show --preset fmow    # the resolved configuration\n"
        "  autoft bench robustness --seeds 0 1 # a benchmark from bench/ (--help after its name)\n",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the whole pipeline locally and print the results table")
    add_config_arguments(run)
    run.add_argument("--out", help="run folder (default: runs/<preset>-<timestamp>)")
    run.add_argument(
        "--runner",
        default="kfp",
        help="kfp: the compiled pipeline through kfp.local (each step a subprocess; needs the pipeline package); "
        "inprocess: the same stages in this process (debugging)",
    )
    add_overwrite(run, "a finished run")
    run.set_defaults(handler=cmd_run)

    config = sub.add_parser("config", help="show the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML")
    add_config_arguments(show)
    show.set_defaults(handler=cmd_config_show)

    pretrain = sub.add_parser("pretrain", help="build (or reuse) the built-in digits foundation model")
    add_config_arguments(pretrain)
    pretrain.add_argument("--cache-dir", help="where to cache it (default: $AUTOFT_CACHE or .cache/autoft)")
    pretrain.set_defaults(handler=cmd_pretrain)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark from the checkout's bench/ folder",
        description="Run bench/NAME.py with this Python; every argument after NAME goes to the benchmark.",
    )
    bench.add_argument("name", help="benchmark name: a file bench/NAME.py")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    bench.set_defaults(handler=cmd_bench)

    _add_stage_commands(sub)
    step = sub.add_parser("step", help="one pipeline step, as a container runs it (same commands as above)")
    _add_stage_commands(step.add_subparsers(dest="step", metavar="STEP", required=True))

    for entry in entry_points(group=COMMAND_PLUGINS):
        entry.load()(sub)
    return parser


def _interrupted(interrupt: BaseException | None = None) -> int:
    if isinstance(interrupt, Terminated):  # Kubernetes stopping the pod: same cleanup, its own exit status
        from autoft.termination import MESSAGE

        print(MESSAGE, file=sys.stderr)
        return EXIT_TERMINATED
    print("interrupted: every file written so far is complete; run the command again to continue", file=sys.stderr)
    return EXIT_INTERRUPTED


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
    previous_sigterm = handle_sigterm()  # SIGTERM (Kubernetes stopping a pod) unwinds like Ctrl-C, exit 143
    try:
        return _run_handler(args)
    finally:
        if previous_sigterm is not None:  # main() called in-process (tests) leaves the caller's handler as it was
            signal.signal(signal.SIGTERM, previous_sigterm)


def _run_handler(args: argparse.Namespace) -> int:
    """Run the command; the error boundary: exit codes 2 (bad input), 1 (the disk), 130 (Ctrl-C), 143 (SIGTERM)."""
    try:
        status = args.handler(args)  # None, or an exit status of its own (e.g. a waited-for run that failed)
    except KeyboardInterrupt as interrupt:
        if args.verbose:
            raise
        return _interrupted(interrupt)
    except Exception as error:
        if not args.verbose and caused_by_interrupt(error):  # Ctrl-C that landed in a library's cleanup
            return _interrupted(interrupt_behind(error))
        # One line for every failure a user can cause or meet (autoft.boundary); -v: the traceback.
        known = describe(error)
        if args.verbose or known is None:
            raise
        code, line = known
        print(line, file=sys.stderr)
        return code
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
