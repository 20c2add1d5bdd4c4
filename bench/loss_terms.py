"""Parameter-norm terms: foreach kernels (what losses.py uses) against a per-tensor Python loop.

Both compute l1init + l2init and their gradients over every trainable tensor of a CLIP model; the
ratio loop/foreach is what matters (same process, same tensors, interleaved repeats).

    .venv/bin/python bench/loss_terms.py --model autoft-small-vit --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from autoft.losses import ParameterAnchor, l1_init, l2_init
from autoft.models.factory import create_clip


def loop_terms(params: list[torch.Tensor], reference: list[torch.Tensor]) -> torch.Tensor:
    count = sum(p.numel() for p in params)
    l1 = sum((p - r).abs().sum() for p, r in zip(params, reference, strict=True))
    l2 = sum((p - r).pow(2).sum() for p, r in zip(params, reference, strict=True))
    return (l1 + l2) / count


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="autoft-small-vit", help="open_clip config name")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    model = create_clip(args.model).model
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * 1e-3)
    anchor = ParameterAnchor([p.detach() + 1e-3 for p in params])

    def foreach_step() -> None:
        model.zero_grad(set_to_none=True)
        (l1_init(params, anchor) + l2_init(params, anchor)).backward()

    def loop_step() -> None:
        model.zero_grad(set_to_none=True)
        loop_terms(params, anchor.reference).backward()

    foreach_step(), loop_step()  # warm-up
    foreach_times, loop_times = [], []
    for _ in range(args.repeats):  # interleaved so drift in machine load hits both alike
        foreach_times += timed(foreach_step, 1)
        loop_times += timed(loop_step, 1)
    f, lo = statistics.median(foreach_times), statistics.median(loop_times)
    print(f"model {args.model}: {len(params)} tensors, {sum(p.numel() for p in params):,} parameters")
    print(f"foreach median {1e3 * f:.2f} ms | loop median {1e3 * lo:.2f} ms | loop/foreach = {lo / f:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
