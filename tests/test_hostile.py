"""A hostile but fair user: every bad input gets one clear line and the right exit code, before any compute.

One table row per case: the command (placeholders filled from a small prepared workspace), the exit
code, a phrase the message must contain, and (optionally) what must NOT have happened. Rows run the
CLI in this process (``autoft.cli.main``), so an unexpected exception fails the row with its traceback:
no row may end in a traceback. The Ctrl-C and disk cases run separately.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from autoft.cli import EXIT_FAILURE, EXIT_INTERRUPTED, main
from autoft.config import config_to_dict
from autoft.stages import finetune_hparams, stage_finetune, stage_prepare, stage_search, stage_zeroshot
from autoft.study_stages import stage_create_study, stage_select_best
from conftest import tiny_pipeline_config

METHODS = ["zeroshot", "ft", "autoft", "autoft_ce"]
SECRET = "hunter2-PASSWORD"


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    code: int
    phrase: str
    env: dict[str, str] = field(default_factory=dict)
    absent: tuple[str, ...] = ()  # paths (with placeholders) that must not exist afterwards
    hidden: tuple[str, ...] = ()  # text that must not appear in the output (secrets)


def _png_bomb(path: Path) -> None:
    """A PNG whose header claims 60000 x 60000 pixels (3.6 gigapixels) with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A prepared workspace: data, a zero-shot model, a finished autoft search, a finished fine-tune."""
    root = tmp_path_factory.mktemp("hostile")
    config = tiny_pipeline_config("hostile", METHODS)
    (root / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config)))
    torch.set_num_threads(1)
    stage_prepare(config, root / "data")
    stage_zeroshot(config, root / "data", root / "zeroshot")
    journal = str(root / "studies" / "autoft.journal")
    stage_create_study(config, "autoft", journal)
    stage_search(config, root / "data", root / "zeroshot", "autoft", journal, progress=False)
    stage_select_best(config, "autoft", journal, root / "search" / "autoft.json")
    hparams = finetune_hparams("autoft", {"autoft": root / "search" / "autoft.json"})
    stage_finetune(config, root / "data", root / "zeroshot", "autoft", hparams, root / "ft-done", progress=False)
    partial = root / "ft-partial"
    shutil.copytree(root / "ft-done", partial)
    (partial / "finetune.json").unlink()  # as if killed after its epoch checkpoint

    (root / "empty.yaml").write_text("# nothing but a comment\n")
    good = root / "photos" / "zero"
    good.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(good / f"{i}.png")
    bombs = root / "bombs" / "zero"
    bombs.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(bombs / "fine.png")
    _png_bomb(bombs / "bomb.png")
    broken = root / "broken" / "one"
    broken.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(broken / "ok.png")
    (broken / "cut.png").write_bytes((broken / "ok.png").read_bytes()[:40])
    (broken / "text.jpg").write_text("not an image at all")
    escape = root / "csvs" / "inner"
    escape.mkdir(parents=True)
    (escape / "eval.csv").write_text("path,label\n../../photos/zero/0.png,zero\n")
    return {
        "root": str(root),
        "config": str(root / "config.yaml"),
        "data": str(root / "data"),
        "zeroshot": str(root / "zeroshot"),
        "journal": journal,
        "search": str(root / "search" / "autoft.json"),
        "done": str(root / "ft-done"),
        "partial": str(root / "ft-partial"),
    }


def _fill(value: str, ws: dict[str, str]) -> str:
    return value.format(**ws)


CONFIG = ["--config", "{config}"]
DATA = ["--data", "{data}", "--zeroshot", "{zeroshot}"]
FINETUNE = ["step", "finetune", *CONFIG, *DATA, "--hparams", "autoft={search}"]
# A dry-run submission of the committed pipeline (no image resolved, nothing compiled into the repo).
COMPILED = Path(__file__).resolve().parents[1] / "pipeline" / "compiled" / "autoft_pipeline.yaml"
SUBMIT = ["submit", "--host", "http://127.0.0.1:9", "--dry-run", "--package", str(COMPILED), "--allow-unpinned-image"]

CASES = [
    # --- the config, before anything is read -----------------------------------------------------------
    Case(
        "unknown method in the config",
        ["config", "show", "--set", "methods=[zeroshot,bogus]"],
        2,
        "unknown methods ['bogus']",
    ),
    Case(
        "yes is not a number",
        ["config", "show", "--set", "search.n_trials=yes"],
        2,
        "search.n_trials: Input should be a valid integer (got True)",
    ),
    Case("empty config file", ["config", "show", "--config", "{root}/empty.yaml"], 2, "is empty"),
    Case("unknown preset", ["config", "show", "--preset", "digitz"], 2, "unknown preset 'digitz'"),
    Case(
        "dataset option typo",
        ["config", "show", "--set", "data.options.ood_val_shfit=invert"],
        2,
        "ood_val_shfit: unknown key",
    ),
    Case(
        "mistyped storage URL in the config",
        ["config", "show", "--set", "search.storage=postgres//u@db/optuna"],
        2,
        "mistyped database URL",
    ),
    Case(
        "storage that is not a database",
        ["config", "show", "--set", "search.storage=redis://db:6379"],
        2,
        "redis:// is not a database",
    ),
    Case("override without a value", ["config", "show", "--set", "search.n_trials"], 2, "use KEY=VALUE"),
    # --- steps: arguments checked before compute --------------------------------------------------------
    Case(
        "bogus method: search",
        ["step", "search", *CONFIG, *DATA, "--method", "bogus", "--storage", "{root}/x.journal"],
        2,
        "--method 'bogus' is not in this config's methods",
    ),
    Case(
        "bogus method: select-best",
        ["step", "select-best", *CONFIG, "--method", "bogus", "--storage", "{journal}", "--out", "{root}/o.json"],
        2,
        "--method 'bogus' is not in this config's methods",
        absent=("{root}/o.json",),
    ),
    Case(
        "bogus method: finetune",
        [*FINETUNE, "--method", "bogus", "--out", "{root}/ftx"],
        2,
        "--method 'bogus' is not in this config's methods",
        absent=("{root}/ftx",),
    ),
    Case(
        "zeroshot is not fine-tuned", [*FINETUNE, "--method", "zeroshot", "--out", "{root}/ftz"], 2, "is not fine-tuned"
    ),
    Case(
        "mistyped storage URL",
        ["step", "search", *CONFIG, *DATA, "--method", "autoft", "--storage", "postgres//u@db/optuna"],
        2,
        "mistyped database URL",
        absent=("postgres//u@db/optuna",),
    ),
    Case(
        "mistyped journal in select-best",
        [
            "step",
            "select-best",
            *CONFIG,
            "--method",
            "autoft",
            "--storage",
            "{root}/studies/autoft.jornal",
            "--out",
            "{root}/o.json",
        ],
        2,
        "ends in .journal",
        absent=("{root}/studies/autoft.jornal",),
    ),
    Case(
        "missing journal in select-best",
        [
            "step",
            "select-best",
            *CONFIG,
            "--method",
            "autoft",
            "--storage",
            "{root}/studies/none.journal",
            "--out",
            "{root}/o.json",
        ],
        2,
        "no study at",
        absent=("{root}/studies/none.journal", "{root}/o.json"),
    ),
    Case(
        "study budget changed",
        [
            "step",
            "search",
            *CONFIG,
            *DATA,
            "--method",
            "autoft",
            "--storage",
            "{journal}",
            "--set",
            "search.n_trials=5",
        ],
        2,
        "was created for search.n_trials=2, not 5",
    ),
    Case(
        "worker index out of range",
        [
            "step",
            "search",
            *CONFIG,
            *DATA,
            "--method",
            "autoft",
            "--storage",
            "{root}/w.journal",
            "--workers",
            "2",
            "--worker-index",
            "2",
        ],
        2,
        "worker index 2 is not in 0..1",
        absent=("{root}/w.journal",),
    ),
    Case(
        "hparams of an unsearched method",
        [*FINETUNE, "--method", "autoft", "--hparams", "flyp={search}", "--out", "{root}/fth"],
        2,
        "--hparams names ['flyp']",
    ),
    Case(
        "hparams file of another schema",
        [
            "step",
            "finetune",
            *CONFIG,
            *DATA,
            "--method",
            "autoft",
            "--hparams",
            "autoft={done}/finetune.json",
            "--out",
            "{root}/fts",
        ],
        2,
        "schema 'autoft.finetune/v2', expected 'autoft.search/v1'",
    ),
    Case(
        "resume another run's checkpoint",
        [*FINETUNE, "--method", "autoft", "--out", "{partial}", "--resume", "--set", "finetune.epochs=2"],
        2,
        "was written by a different fine-tuning run (finetune settings differ)",
    ),
    Case(
        "resume with other loss weights",
        [*FINETUNE, "--method", "autoft_ce", "--out", "{partial}", "--resume"],
        2,
        "hparams, method differ",
    ),
    Case(
        "resume a finished run",
        [*FINETUNE, "--method", "autoft", "--out", "{done}", "--resume"],
        0,
        "had already finished",
    ),
    Case(
        "device=cuda without a GPU",
        ["step", "zeroshot", *CONFIG, "--data", "{data}", "--out", "{root}/zs", "--set", "device=cuda"],
        2,
        "no CUDA device is visible",
    ),
    Case(
        "missing pretrained weights",
        [
            "step",
            "zeroshot",
            *CONFIG,
            "--data",
            "{data}",
            "--out",
            "{root}/zs",
            "--set",
            "model.pretrained={root}/none.safetensors",
        ],
        2,
        "pretrained weights file not found",
        absent=("{root}/zs",),
    ),
    Case(
        "unknown eval set",
        [
            "step",
            "evaluate",
            *CONFIG,
            "--data",
            "{data}",
            "--eval-set",
            "fog",
            "--model",
            "z={zeroshot}",
            "--out",
            "{root}/e.json",
        ],
        2,
        "no split 'fog'",
        absent=("{root}/e.json",),
    ),
    Case(
        "--model without a name",
        ["step", "evaluate", *CONFIG, "--data", "{data}", "--model", "{zeroshot}", "--out", "{root}/e.json"],
        2,
        "--model",
        absent=("{root}/e.json",),
    ),
    Case(
        "eval folder and csv together",
        [
            "step",
            "evaluate",
            "--eval-folder",
            "{root}/photos",
            "--eval-csv",
            "{root}/csvs/inner/eval.csv",
            "--model",
            "z={zeroshot}",
            "--out",
            "{root}/e.json",
        ],
        2,
        "not allowed with argument",
    ),
    Case(
        "decompression bomb",
        ["step", "evaluate", "--eval-folder", "{root}/bombs", "--model", "z={zeroshot}", "--out", "{root}/e.json"],
        2,
        "decompression bomb",
        absent=("{root}/e.json",),
    ),
    Case(
        "unreadable images",
        ["step", "evaluate", "--eval-folder", "{root}/broken", "--model", "z={zeroshot}", "--out", "{root}/e.json"],
        2,
        "2 of 3 images cannot be read",
        absent=("{root}/e.json",),
    ),
    Case(
        "csv path escaping its folder",
        [
            "step",
            "evaluate",
            "--eval-csv",
            "{root}/csvs/inner/eval.csv",
            "--model",
            "z={zeroshot}",
            "--out",
            "{root}/e.json",
        ],
        2,
        "outside its folder",
        absent=("{root}/e.json",),
    ),
    Case(
        "unreachable GCS endpoint",
        [
            "step",
            "evaluate",
            "--eval-folder",
            "gs://bucket/photos",
            "--model",
            "z={zeroshot}",
            "--out",
            "{root}/e.json",
        ],
        2,
        "cannot list gs://bucket/photos",
        env={"STORAGE_EMULATOR_HOST": "127.0.0.1:9", "AUTOFT_GCS_RETRY_DEADLINE": "3"},
    ),
    # --- Kubeflow: nothing secret or mistyped reaches the pipeline --------------------------------------
    Case(
        "password in a submitted storage URL",
        [
            "submit",
            "--host",
            "http://127.0.0.1:9",
            "--dry-run",
            "--preset",
            "smoke",
            "--set",
            f"search.storage=postgresql://u:{SECRET}@db/optuna",
        ],
        2,
        "search.storage holds a URL with a password",
        hidden=(SECRET,),
    ),
    Case(
        "password in a submitted tracking URI",
        [
            "submit",
            "--host",
            "http://127.0.0.1:9",
            "--dry-run",
            "--preset",
            "smoke",
            "--set",
            f"tracking.mlflow_uri=postgresql://u:{SECRET}@db/mlflow",
        ],
        2,
        "autoft-mlflow-auth",
        hidden=(SECRET,),
    ),
    Case(
        "password in a --param",
        [
            *SUBMIT,
            "--param",
            f"mlflow_tracking_uri=https://u:{SECRET}@mlflow",
        ],
        2,
        "mlflow_tracking_uri holds a URL with a password",
        hidden=(SECRET,),
    ),
    Case(
        "password in a compiled default",
        [
            "compile",
            "--preset",
            "smoke",
            "--output",
            "{root}/p.yaml",
            "--set",
            f"search.storage=postgresql://u:{SECRET}@db/optuna",
        ],
        2,
        "AUTOFT_OPTUNA_STORAGE",
        hidden=(SECRET,),
        absent=("{root}/p.yaml",),
    ),
    Case(
        "parameter of the wrong type",
        [*SUBMIT, "--param", "search_workers=abc"],
        2,
        "expected number integer, got 'abc'",
    ),
    Case(
        "unknown parameter",
        [*SUBMIT, "--param", "serch_workers=4"],
        2,
        "is not a pipeline parameter",
    ),
]


@pytest.fixture
def run(
    ws: dict[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[[Case], tuple[int, str]]:
    def invoke(case: Case) -> tuple[int, str]:
        for key, value in case.env.items():
            monkeypatch.setenv(key, value)
        try:
            code = main([_fill(arg, ws) for arg in case.argv])
        except SystemExit as exit_:  # argparse's usage errors: a usage line and exit 2
            code = int(exit_.code or 0)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return invoke


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case: Case, ws: dict[str, str], run: Callable[[Case], tuple[int, str]]) -> None:
    if case.name == "device=cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, output = run(case)
    assert code == case.code, output
    assert case.phrase in output, output
    assert "Traceback" not in output
    for text in case.hidden:
        assert text not in output
    for path in case.absent:
        assert not Path(_fill(path, ws)).exists(), f"{path} was created"


def test_the_table_covers_the_issue(ws: dict[str, str]) -> None:
    assert len(CASES) >= 27
    assert len({case.name for case in CASES}) == len(CASES)


def test_argparse_conflicts_are_usage_errors(ws: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["config", "show", "--preset", "smoke", "--config", ws["config"]])
    assert exit_.value.code == 2 and "not allowed with argument --preset" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# By class: outputs never destroy inputs, names do not collide, locations are validated where given,
# secrets in every form stay hidden, hostile files are refused or read correctly, every failure is one line.
# Each row: exit code, a phrase, no traceback, ONE line on stderr for a failure, the workspace's inputs
# unchanged (hashed before and after), paths not created, secrets not printed.
# ----------------------------------------------------------------------------------------------------


def _alias_bomb() -> str:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def hostile_files(ws: dict[str, str]) -> dict[str, str]:
    """Hostile inputs beside the workspace: YAML bombs, odd images, symlinks out, broken weights."""
    from safetensors.torch import load_file, save_file

    root = Path(ws["root"]) / "hostile"
    root.mkdir()
    (root / "bomb.yaml").write_text(_alias_bomb())
    (root / "deep.yaml").write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "dup.yaml").write_text(Path(ws["config"]).read_text() + "search:\n  n_trials: 3\n")
    (root / "recursive.yaml").write_text("methods: &m [*m]\n")
    for name in ("i16", "pal", "rgba", "link", "ftiff"):
        (root / name / "zero").mkdir(parents=True)
    Image.fromarray((torch.arange(32 * 32).reshape(32, 32) * 60).numpy().astype("uint16")).save(root / "i16/zero/a.png")
    palette = Image.new("P", (32, 32))
    palette.putpalette([0, 0, 0, 200, 100, 50] * 128)
    palette.save(root / "pal/zero/a.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(root / "rgba/zero/a.png")
    Image.fromarray(torch.ones(32, 32).numpy()).save(root / "ftiff/zero/a.tif")
    os.symlink(Path(ws["root"]) / "photos/zero/0.png", root / "link/zero/a.png")
    for name, value in (("nan", float("nan")), ("inf", float("inf"))):
        shutil.copytree(ws["zeroshot"], root / name)
        state = load_file(str(root / name / "model.safetensors"))
        key = next(key for key, tensor in state.items() if tensor.is_floating_point())
        state[key] = state[key].clone()
        state[key].view(-1)[0] = value
        save_file(state, str(root / name / "model.safetensors"))
    shutil.copytree(ws["data"], root / "data-badnpz")
    (root / "data-badnpz" / "id_val.npz").write_bytes(b"not an npz file at all" * 20)
    (root / "eval.json").write_text("{}")
    return {"hostile": str(root)}


@dataclass(frozen=True)
class ClassCase:
    kind: str  # the issue's class
    name: str
    argv: list[str]
    code: int
    phrase: str
    absent: tuple[str, ...] = ()
    hidden: tuple[str, ...] = ()


OUT = "{hostile}/out"
EVALUATE = ["step", "evaluate", *CONFIG, "--data", "{data}", "--model", "z={zeroshot}"]
SELECT = ["step", "select-best", *CONFIG, "--storage", "{journal}"]
CLASS_CASES = [
    # --- outputs never destroy inputs -------------------------------------------------------------------
    ClassCase(
        "outputs",
        "evaluate --out the weights",
        [*EVALUATE, "--out", "{zeroshot}/model.safetensors"],
        2,
        "is inside the input --model z",
    ),
    ClassCase("outputs", "evaluate --out a folder", [*EVALUATE, "--out", "{zeroshot}"], 2, "is a folder"),
    ClassCase(
        "outputs",
        "zeroshot --out the data",
        ["step", "zeroshot", *CONFIG, "--data", "{data}", "--out", "{data}"],
        2,
        "is the input --data",
    ),
    ClassCase("outputs", "select-best --out the journal", [*SELECT, "--out", "{journal}"], 2, "is the input --storage"),
    ClassCase(
        "outputs",
        "finished fine-tune without --resume",
        [*FINETUNE, "--out", "{done}"],
        2,
        "already holds a finished fine-tune",
    ),
    ClassCase(
        "outputs",
        "unfinished fine-tune without --resume",
        [*FINETUNE, "--out", "{partial}"],
        2,
        "--resume continues it",
    ),
    ClassCase(
        "outputs",
        "finished evaluation without --overwrite",
        [*EVALUATE, "--out", "{hostile}/eval.json"],
        2,
        "--overwrite replaces it",
    ),
    ClassCase(
        "outputs",
        "prepare over prepared data",
        ["step", "prepare", *CONFIG, "--out", "{data}"],
        2,
        "already holds prepared data",
    ),
    # --- names collide ----------------------------------------------------------------------------------
    *[
        ClassCase(
            "names",
            f"eval set named {name}",
            ["config", "show", "--set", f"data.eval_sets=[{{{{name: {name}, kind: folder, path: x}}}}]"],
            2,
            "is a built-in split name",
        )
        for name in ("id_val", "ood_val", "id_test")
    ],
    ClassCase(
        "names",
        "eval set named like the dataset's shift",
        [
            "step",
            "prepare",
            *CONFIG,
            "--out",
            "{hostile}/prep-invert",
            "--set",
            "data.eval_sets=[{{name: invert, kind: folder, path: '{root}/photos'}}]",
        ],
        2,
        "are splits of dataset 'digits' already",
    ),
    # --- unsupported locations --------------------------------------------------------------------------
    ClassCase(
        "locations",
        "--checkpoint-root s3://",
        [*FINETUNE, "--out", OUT, "--checkpoint-root", "s3://bucket/x"],
        2,
        "s3: is not supported",
        absent=("s3:", OUT),
    ),
    ClassCase(
        "locations",
        "--checkpoint-root gs:// without a bucket",
        [*FINETUNE, "--out", OUT, "--checkpoint-root", "gs://"],
        2,
        "needs a bucket",
        absent=("gs:", OUT),
    ),
    ClassCase(
        "locations",
        "prepare --out gs://",
        ["step", "prepare", *CONFIG, "--out", "gs://bucket/data"],
        2,
        "gs:// is not supported here",
        absent=("gs:",),
    ),
    ClassCase(
        "locations",
        "evaluate --out gs://",
        [*EVALUATE, "--out", "gs://bucket/e.json"],
        2,
        "gs:// is not supported here",
        absent=("gs:",),
    ),
    ClassCase(
        "locations",
        "data.root s3://",
        ["config", "show", "--set", "data.root=s3://bucket/x"],
        2,
        "data.root: 's3://bucket/x': s3: is not supported",
    ),
    ClassCase(
        "locations",
        "tracking URI of no tracking store",
        ["config", "show", "--set", "tracking.mlflow_uri=redis://h"],
        2,
        "is not an MLflow tracking store",
    ),
    ClassCase(
        "locations",
        "submitted checkpoint_root s3://",
        [*SUBMIT, "--param", "checkpoint_root=s3://bucket/x"],
        2,
        "--param checkpoint_root 's3://bucket/x': s3: is not supported",
    ),
    # --- secrets in other forms -------------------------------------------------------------------------
    ClassCase(
        "secrets",
        "libpq ?password= in a submitted storage",
        [
            "submit",
            "--host",
            "http://127.0.0.1:9",
            "--dry-run",
            "--preset",
            "smoke",
            "--set",
            f"search.storage=postgresql://u@db/optuna?password={SECRET}",
        ],
        2,
        "holds a URL with a password",
        hidden=(SECRET,),
    ),
    ClassCase(
        "secrets",
        "?sslpassword= in a compiled default",
        [
            "compile",
            "--preset",
            "smoke",
            "--output",
            "{hostile}/p.yaml",
            "--set",
            f"search.storage=postgresql://u@db/optuna?sslpassword={SECRET}",
        ],
        2,
        "AUTOFT_OPTUNA_STORAGE",
        hidden=(SECRET,),
        absent=("{hostile}/p.yaml",),
    ),
    ClassCase(
        "secrets",
        "?token= in a --param",
        [*SUBMIT, "--param", f"mlflow_tracking_uri=https://mlflow/?token={SECRET}"],
        2,
        "mlflow_tracking_uri holds a URL with a password",
        hidden=(SECRET,),
    ),
    ClassCase(
        "secrets",
        "config show redacts",
        ["config", "show", "--set", f"tracking.mlflow_uri=https://u:{SECRET}@m"],
        0,
        "https://u:***@m",
        hidden=(SECRET,),
    ),
    ClassCase(
        "secrets",
        "unreachable database with a password",
        ["step", "search", *CONFIG, *DATA, "--storage", f"postgresql://u:{SECRET}@127.0.0.1:9/optuna"],
        1,
        "connection to server at",
        hidden=(SECRET,),
    ),
    ClassCase(
        "secrets",
        "mistyped URL with a password",
        ["config", "show", "--set", f"search.storage=postgres//u:{SECRET}@db/optuna"],
        2,
        "u:***@db",
        hidden=(SECRET,),
    ),
    # --- hostile files ----------------------------------------------------------------------------------
    ClassCase("files", "YAML alias bomb", ["config", "show", "--config", "{hostile}/bomb.yaml"], 2, "alias bomb"),
    ClassCase("files", "deeply nested YAML", ["config", "show", "--config", "{hostile}/deep.yaml"], 2, "nested deeper"),
    ClassCase(
        "files",
        "duplicate YAML keys",
        ["config", "show", "--config", "{hostile}/dup.yaml"],
        2,
        "duplicate key 'search'",
    ),
    ClassCase(
        "files", "recursive YAML alias", ["config", "show", "--config", "{hostile}/recursive.yaml"], 2, "recursive"
    ),
    ClassCase(
        "files",
        "duplicate keys in a --set value",
        ["config", "show", "--set", "model={{name: a, name: b}}"],
        2,
        "duplicate key 'name'",
    ),
    ClassCase(
        "files",
        "symlink out of an eval folder",
        ["step", "evaluate", "--eval-folder", "{hostile}/link", "--model", "z={zeroshot}", "--out", OUT],
        2,
        "symbolic links leading outside",
        absent=(OUT,),
    ),
    ClassCase(
        "files",
        "float image",
        ["step", "evaluate", "--eval-folder", "{hostile}/ftiff", "--model", "z={zeroshot}", "--out", OUT],
        2,
        "mode F",
        absent=(OUT,),
    ),
    ClassCase(
        "files",
        "NaN weights",
        ["step", "evaluate", *CONFIG, "--data", "{data}", "--model", "m={hostile}/nan", "--out", OUT],
        2,
        "NaN or infinite values",
        absent=(OUT,),
    ),
    ClassCase(
        "files",
        "infinite weights as the zero-shot model",
        [
            "step",
            "search",
            *CONFIG,
            "--data",
            "{data}",
            "--zeroshot",
            "{hostile}/inf",
            "--storage",
            "{hostile}/s.journal",
        ],
        2,
        "NaN or infinite values",
        absent=("{hostile}/s.journal",),
    ),
    ClassCase(
        "files",
        "corrupt .npz",
        [
            "step",
            "evaluate",
            *CONFIG,
            "--data",
            "{hostile}/data-badnpz",
            "--eval-set",
            "id_val",
            "--model",
            "z={zeroshot}",
            "--out",
            OUT,
        ],
        2,
        "is corrupt",
        absent=(OUT,),
    ),
    # --- one line instead of a traceback ------------------------------------------------------------------
    ClassCase(
        "one line",
        "seed beyond 2**31",
        ["config", "show", "--set", f"seed={2**70}"],
        2,
        "seed: Input should be less than or equal to 2147483647",
    ),
    ClassCase(
        "one line",
        "infinite lr",
        ["config", "show", "--set", "finetune.lr=.inf"],
        2,
        "finetune.lr: Input should be a finite number",
    ),
    ClassCase(
        "one line",
        "unknown model name",
        ["config", "show", "--set", "model.name=ViT-B-16x"],
        2,
        "unknown model 'ViT-B-16x'",
    ),
    ClassCase(
        "one line",
        "negative data seed",
        ["config", "show", "--set", "data.ood_val.seed=-1"],
        2,
        "data.ood_val.seed: Input should be greater than or equal to 0",
    ),
    ClassCase(
        "one line",
        "two schema errors",
        ["config", "show", "--set", "seed=-1", "--set", "search.n_trials=0"],
        2,
        "seed: Input should be greater than or equal to 0; search.n_trials",
    ),
    ClassCase(
        "one line",
        "batch larger than the dataset",
        ["step", "search", *CONFIG, *DATA, "--storage", "{hostile}/b.journal", "--set", "data.batch_size=100000"],
        2,
        "is larger than the training split",
        absent=("{hostile}/b.journal",),
    ),
    ClassCase(
        "one line",
        "compile --search-parallelism 0",
        ["compile", "--preset", "smoke", "--output", "{hostile}/c.yaml", "--search-parallelism", "0"],
        2,
        "--search-parallelism 0",
        absent=("{hostile}/c.yaml",),
    ),
    ClassCase(
        "one line",
        "garbage KFP host",
        ["submit", "--host", "not a url", "--package", str(COMPILED), "--allow-unpinned-image"],
        2,
        "--host 'not a url'",
    ),
    ClassCase(
        "one line",
        "unreachable KFP host",
        ["submit", "--host", "http://127.0.0.1:9", "--package", str(COMPILED), "--allow-unpinned-image"],
        1,
        "127.0.0.1",
    ),
    ClassCase(
        "one line",
        "unreachable PostgreSQL",
        ["step", "select-best", *CONFIG, "--storage", "postgresql://u@127.0.0.1:9/optuna", "--out", OUT],
        1,
        "connection to server at",
        absent=(OUT,),
    ),
    ClassCase(
        "one line",
        "--out a folder where a file is expected",
        [*SELECT, "--out", "{root}/search"],
        2,
        "is a folder; give a file path",
    ),
    # --- misleading messages ------------------------------------------------------------------------------
    ClassCase(
        "messages",
        "--workers 0",
        ["step", "search", *CONFIG, *DATA, "--storage", "{hostile}/w.journal", "--workers", "0"],
        2,
        "--workers 0: at least one worker is needed",
        absent=("{hostile}/w.journal",),
    ),
    ClassCase(
        "messages",
        "--search-parallelism names itself",
        ["compile", "--preset", "smoke", "--output", "{hostile}/c.yaml", "--search-parallelism", "-1"],
        2,
        "--search-parallelism -1",
    ),
    ClassCase(
        "messages",
        "--out that is a folder suggests a file beside it",
        [*EVALUATE, "--out", "{root}/search"],
        2,
        "e.g. {root}/search.json",
    ),
]


def _digest(path: Path) -> str:
    """A content hash of a file or a folder tree (lock files of running writers aside)."""
    import hashlib

    digest = hashlib.sha256()
    for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if item.is_file():
            digest.update(str(item.relative_to(path) if path.is_dir() else item.name).encode())
            digest.update(item.read_bytes())
    return digest.hexdigest()


@pytest.mark.parametrize("case", CLASS_CASES, ids=[f"{case.kind}: {case.name}" for case in CLASS_CASES])
def test_hostile_input_by_class(
    case: ClassCase,
    ws: dict[str, str],
    hostile_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    places = {**ws, **hostile_files}
    inputs = [Path(places[key]) for key in ("data", "zeroshot", "done", "partial", "search")] + [Path(ws["journal"])]
    inputs.append(Path(hostile_files["hostile"]) / "eval.json")
    before = {path: _digest(path) for path in inputs}
    monkeypatch.chdir(hostile_files["hostile"])  # a scheme turned into a local folder would land here
    try:
        code = main([arg.format(**places) for arg in case.argv])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == case.code, output
    assert case.phrase.format(**places) in output, output
    assert "Traceback" not in output
    if code:
        assert len(captured.err.strip().splitlines()) == 1, captured.err  # one line, not a log tail
    for text in case.hidden:
        assert text not in output
    for path in case.absent:
        assert not (Path(hostile_files["hostile"]) / path.format(**places)).exists(), f"{path} was created"
    assert {path: _digest(path) for path in inputs} == before, "an input was modified"


def test_every_class_has_three_cases() -> None:
    kinds = [case.kind for case in CLASS_CASES]
    assert all(kinds.count(kind) >= 3 for kind in set(kinds)), kinds
    assert len(set(kinds)) == 7 and len({case.name for case in CLASS_CASES}) == len(CLASS_CASES)


def test_image_modes_are_converted_not_clipped(hostile_files: dict[str, str]) -> None:
    """16-bit grey keeps its range (PIL's convert("RGB") clips it to white); palette colours and alpha
    (composited onto white) come out as they look."""
    import numpy as np

    from autoft.data.images import to_rgb

    root = Path(hostile_files["hostile"])
    with Image.open(root / "i16/zero/a.png") as img:
        source = np.asarray(img).astype(float)
        converted = np.asarray(to_rgb(img)).astype(float)
    assert converted.shape == (32, 32, 3)
    assert abs(converted[..., 0].mean() - source.mean() / 257) < 1.0  # not 255 everywhere
    assert (converted[..., 0] == 255).mean() < 0.05
    with Image.open(root / "pal/zero/a.png") as img:
        assert tuple(np.asarray(to_rgb(img))[0, 0]) == (0, 0, 0)
    with Image.open(root / "rgba/zero/a.png") as img:
        assert tuple(np.asarray(to_rgb(img))[0, 0]) == (255, 255, 255)  # transparent -> the white background


def test_a_second_writer_of_one_output_is_refused_and_a_dead_ones_lock_taken_over(tmp_path: Path) -> None:
    import fcntl

    from autoft.errors import ConfigError
    from autoft.outputs import lock_path, output_lock

    out = tmp_path / "eval.json"
    with output_lock(out), pytest.raises(ConfigError, match="being written by another autoft"), output_lock(out):
        pass
    lock_path(out).write_text("99999999")  # left by a writer that was killed: nobody holds the flock
    with output_lock(out) as held:
        assert held.read_text() == str(os.getpid())
        with open(held) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock_path(out).exists()


def test_a_checkpoint_root_of_another_run_advises_a_fresh_root(
    ws: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --checkpoint-root shared with another fine-tuning run: a new --out would not help, a new root does."""
    argv = ["step", "finetune", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--hparams", f"autoft={ws['search']}", "--checkpoint-root", str(tmp_path / "durable")]
    assert main([*argv, "--out", str(tmp_path / "a"), "--set", "finetune.epochs=1"]) == 0
    capsys.readouterr()
    assert main([*argv, "--out", str(tmp_path / "b"), "--set", "finetune.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert "belongs to a different fine-tuning run (finetune settings differ)" in err, err
    assert "fresh --checkpoint-root" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resolved_configs_written_anywhere_are_redacted(ws: dict[str, str], tmp_path: Path) -> None:
    """`step prepare` writes the resolved config beside the data: no user:PASSWORD@ or ?password= in it."""
    argv = ["step", "prepare", "--config", ws["config"], "--out", str(tmp_path / "data")]
    argv += ["--set", f"tracking.mlflow_uri=https://u:{SECRET}@mlflow", "--set"]
    argv += [f"search.storage=postgresql://u@db/optuna?sslmode=require&password={SECRET}"]
    assert main(argv) == 0
    written = (tmp_path / "data" / "config.yaml").read_text()
    assert SECRET not in written
    assert "https://u:***@mlflow" in written and "password=***" in written and "sslmode=require" in written


# ----------------------------------------------------------------------------------------------------
# Ctrl-C, full and read-only disks: one line, exit 130 / 1, nothing half-written, the folder says so.
# ----------------------------------------------------------------------------------------------------


def _default_sigint() -> None:
    # The CLI as a terminal starts it: a test run launched in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then never raises KeyboardInterrupt (the Ctrl-C test waited out
    # its timeout in such CI runs).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, **kwargs) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "autoft.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_default_sigint,
        **kwargs,
    )


def test_ctrl_c_ends_with_one_line_and_130_and_marks_the_run(ws: dict[str, str], tmp_path: Path) -> None:
    from autoft.config import resolve_config
    from autoft.search.study import load_existing_study

    run_dir = tmp_path / "run"
    process = _cli(
        "run", "--runner", "inprocess", "--config", ws["config"], "--out", str(run_dir), "--set", "search.n_trials=200"
    )
    status = run_dir / "run_status.json"
    journal = run_dir / "studies" / "autoft.journal"
    search = resolve_config(config_file=ws["config"], overrides=["search.n_trials=200"]).search_for("autoft")
    deadline = time.monotonic() + 300
    # An event, not a delay: the search has created its first trial (so the run is mid-search, not done).
    while not (journal.exists() and load_existing_study(str(journal), search).trials):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the search did not start within 300 s"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in err and "Traceback" not in err, err
    assert json.loads(status.read_text())["state"] == "interrupted", status.read_text()
    assert not [p for p in run_dir.rglob(".*.tmp")], "no temporary file left behind"


def _interrupted_in_a_cleanup(*_: object) -> None:
    """Ctrl-C landing inside a library's cleanup, as when it hits Optuna's journal lock release."""
    try:
        raise KeyboardInterrupt
    finally:
        raise FileNotFoundError(2, "No such file or directory", "study.journal.lock.rename")


def test_ctrl_c_inside_a_library_cleanup_is_still_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import autoft.cli as cli
    from autoft.runner import RUN_STATUS_FILE, run_status

    monkeypatch.setattr(cli, "cmd_config_show", _interrupted_in_a_cleanup)
    assert main(["config", "show"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert err.startswith("interrupted") and "Traceback" not in err
    with pytest.raises(FileNotFoundError), run_status(tmp_path):
        _interrupted_in_a_cleanup()
    assert json.loads((tmp_path / RUN_STATUS_FILE).read_text())["state"] == "interrupted"


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount a tiny tmpfs (root only): ``mount("size=200k")`` or ``mount("ro")``."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip()}); needs root")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize(
    ("options", "reason"), [("size=200k", "No space left on device"), ("ro", "Read-only file system")]
)
def test_a_full_or_read_only_disk_is_one_line_and_exit_1(
    options: str,
    reason: str,
    ws: dict[str, str],
    small_mount: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = small_mount(options)
    code = main(["step", "prepare", "--config", ws["config"], "--out", str(folder / "data")])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE, err
    assert reason in err and "free space or pick a writable folder" in err
    assert "Traceback" not in err
    assert not [p for p in folder.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_a_killed_cli_search_worker_started_again_completes_exactly_n_trials(
    ws: dict[str, str], tmp_path: Path
) -> None:
    """The default local search (a journal file): kill -9 `autoft step search` mid-trial, run it again."""
    import optuna

    from autoft.config import resolve_config
    from autoft.search.study import load_existing_study

    journal = str(tmp_path / "autoft.journal")
    overrides = ["--set", "search.n_trials=5", "--set", "search.inner_steps=40"]
    argv = ["step", "search", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--method", "autoft", "--storage", journal, *overrides]
    search = resolve_config(config_file=ws["config"], overrides=overrides[1::2]).search_for("autoft")
    first = _cli(*argv)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert first.poll() is None, first.communicate()[1]
            assert time.monotonic() < deadline, "the search did not get going within 180 s"
            if Path(journal).exists():
                trials = load_existing_study(journal, search).trials
                states = [t.state for t in trials]
                if (
                    states.count(optuna.trial.TrialState.COMPLETE) >= 2
                    and states[-1] == optuna.trial.TrialState.RUNNING
                ):
                    break
            time.sleep(0.1)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    again = _cli(*argv)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    study = load_existing_study(journal, search)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") == 5 and states.count("RUNNING") == 0, states
    assert states.count("FAIL") >= 1, "the killed worker's trial was failed when it started again"


def test_a_killed_fine_tune_resumes_elsewhere_from_its_durable_checkpoint(ws: dict[str, str], tmp_path: Path) -> None:
    """kill -9 `autoft step finetune` after its first epoch; start it again with a fresh --out (another pod,
    its scratch gone) and the same --checkpoint-root: it resumes and ends with an uninterrupted run's weights."""
    from autoft.models.checkpoint import load_state_dict_file

    argv = ["step", "finetune", "--config", ws["config"], "--data", ws["data"], "--zeroshot", ws["zeroshot"]]
    argv += ["--hparams", f"autoft={ws['search']}", "--method", "autoft", "--set", "finetune.epochs=3"]
    durable = ["--checkpoint-root", str(tmp_path / "durable")]
    first = _cli(*argv, "--out", str(tmp_path / "pod-a"), *durable)
    try:
        line = ""
        while "durable checkpoint of autoft: epoch 1/3" not in line:
            line = first.stdout.readline()
            assert line or first.poll() is None, first.communicate()[1]
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    again = _cli(*argv, "--out", str(tmp_path / "pod-b"), *durable)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resumed autoft from epoch 1" in out
    reference = _cli(*argv, "--out", str(tmp_path / "uninterrupted"))
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err
    resumed = load_state_dict_file(next((tmp_path / "pod-b" / "model").glob("*.safetensors")))
    expected = load_state_dict_file(next((tmp_path / "uninterrupted" / "model").glob("*.safetensors")))
    assert resumed.keys() == expected.keys()
    assert all(torch.equal(resumed[k], expected[k]) for k in expected)
