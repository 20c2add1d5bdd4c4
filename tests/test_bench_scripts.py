"""The engine benchmarks run end to end: bench/gpu.py in its CPU mode (it must say that it is not a GPU
measurement) and bench/engine.py on a few steps. Numbers are not checked here: timings belong to the
benchmarks, which compare paths within one run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import torch

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_runs_the_tiny_model_on_cpu_and_says_so(tmp_path: Path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        assert _bench("gpu").main(["--cpu", "--json", str(tmp_path / "gpu.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["device"] == "cpu" and result["model"] == "autoft-tiny-vit"
    assert "NO GPU" in result["note"] and "NO GPU" in capsys.readouterr().out
    assert [s["variant"] for s in result["steps"]] == [
        "eager, foreach AdamW",
        "eager, fused AdamW",
        "eager, fused AdamW, channels-last",
    ]
    assert all(s["images_per_s"] > 0 and s["tflops_per_step"] > 0 and s["mfu"] is None for s in result["steps"])
    assert [t["head_mode"] for t in result["trials"]] == ["text", "linear"]
    assert all(t["whole_trial_s"] > 0 and t["ood_val_scoring_s"] > 0 for t in result["trials"])
    assert result["decode"]["images_per_s_per_core"] > 0


def test_engine_benchmark_reports_every_path(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    args = ["--steps", "2", "--repeats", "1", "--train-size", "128", "--ood-val-size", "64", "--json"]
    try:
        assert _bench("engine").main([*args, str(tmp_path / "engine.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "engine.json").read_text())
    assert {"ce: final fine-tuning path", "nine: inner loop", "bare loop"} <= set(result["median_ms"])
    assert set(result["speed_vs_bare"]) == {
        name for name in result["median_ms"] if name.startswith(("ce:", "nine:", "ce+flyp:"))
    }
    assert all(value > 0 for value in result["median_ms"].values())


def test_orchestration_benchmark_pairs_the_runners_per_round() -> None:
    bench = _bench("orchestration")

    def run(runner: str, seconds: float, code: int = 0) -> dict:
        timing = {"prepare": 1.0, "kfp/prepare-data": 3.0, "kfp_total": seconds} if runner == "kfp" else {}
        return {"runner": runner, "seconds": seconds, "exit_code": code, "timing_s": timing, "console_lines": 20}

    rounds = [
        {"order": ["kfp", "inprocess"], "kfp": run("kfp", 120.0), "inprocess": run("inprocess", 100.0)},
        {"order": ["inprocess", "kfp"], "kfp": run("kfp", 130.0), "inprocess": run("inprocess", 90.0)},
        {"order": ["kfp", "inprocess"], "kfp": run("kfp", 1.0, code=1), "inprocess": run("inprocess", 90.0)},
    ]
    summary = bench.summarize(rounds)
    assert summary["rounds_ok"] == 2 and summary["ratios"] == [1.2, 1.444]
    assert summary["ratio_median"] == 1.322 and summary["ratio_best_rounds"] == round(120 / 90, 3)
    text = bench.markdown(
        {"preset": "smoke", "date": "d", "machine": "m", "cpus": 2, "argv": [], "rounds": rounds, "summary": summary}
    )
    assert "Median ratio 1.32" in text and "| prepare-data | 3.0 |" in text
