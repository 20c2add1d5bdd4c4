"""Several processes fine-tuning one model (torch DDP), with one process as the ordinary case.

A fine-tuning step with N > 1 devices starts ``torchrun`` (:func:`launch`); each process reads its rank
from the environment torchrun sets (:func:`distributed`). World size 1 takes the same code path, with
every collective a no-op, so there is one training loop to test.

Why the results match one process: every rank builds the same global batch (``autoft.data.loaders``)
and takes its contiguous share; per-example mean losses are averaged by DDP's gradient averaging; the
batch-level ``flyp`` term sees the whole batch because image and caption features are gathered with a
gradient (:meth:`Dist.gather_rows`); parameter terms are the same on every rank. So each optimizer step
applies the one-process gradient, up to float summation order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import autoft.threads
from autoft.errors import ConfigError


class _GatherRows(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order; the backward hands each rank the summed gradient of
    its own rows (every rank computes the same loss from the gathered tensor)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any, rank: int, world_size: int) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        ctx.group, ctx.rank, ctx.rows = group, rank, tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None, None, None


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, local rank (its device on the node)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: Any = None  # a process group of its own for feature gathers, apart from DDP's gradient buckets

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def chunk(self, count: int) -> tuple[int, int]:
        """This rank's contiguous range of ``count`` examples (sharded evaluation)."""
        per_rank = -(-count // self.world_size)
        return min(self.rank * per_rank, count), min((self.rank + 1) * per_rank, count)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def gather_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """Equal-sized row blocks of all ranks, concatenated, with gradients flowing back to their owners."""
        if not self.active:
            return tensor
        return _GatherRows.apply(tensor, self.group, self.rank, self.world_size)

    def gather_varlen(self, tensor: torch.Tensor) -> torch.Tensor:
        """2-D blocks from every rank (any row count, even 0), concatenated in rank order; no gradient."""
        if not self.active:
            return tensor
        shape = torch.tensor(list(tensor.shape), device=tensor.device)
        shapes = [torch.zeros_like(shape) for _ in range(self.world_size)]
        dist.all_gather(shapes, shape, group=self.group)
        rows, cols = (max(int(s[axis]) for s in shapes) for axis in (0, 1))
        padded = tensor.new_zeros(rows, cols)
        padded[: tensor.shape[0], : tensor.shape[1]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([part[: int(s[0]), : int(s[1])] for part, s in zip(parts, shapes, strict=True)])

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average over ranks (epoch statistics)."""
        if not self.active:
            return tensor
        total = tensor.detach().clone()
        dist.all_reduce(total, group=self.group)
        return total / self.world_size

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """DDP around ``module`` when several processes train; the module itself otherwise."""
        if not self.active:
            return module
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


SINGLE = Dist()
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def available_cpus() -> int:
    """The cores this process may run on (the container's share, not the host's count)."""
    return autoft.threads.available_cpus()


@contextmanager
def distributed(device_type: str) -> Iterator[Dist]:
    """This process's :class:`Dist` from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    Several processes join a process group (NCCL on GPUs, gloo on CPUs) and leave it on exit; a process
    started without torchrun is the whole run.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield SINGLE
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        yield Dist(rank, world_size, local_rank, dist.new_group(backend=backend))
    finally:
        dist.destroy_process_group()


def die_with_parent() -> None:
    """Make this process die when its parent (torchrun) does; Linux only.

    torchrun starts each rank in a session of its own, so killing the step's process group (a SIGKILL, a
    node agent) would leave the ranks training on, writing into the same checkpoint folder as the run
    that resumes it.
    """
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        return  # not allowed here (a sandbox): the rank then only dies with its session
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def resolve_nproc(setting: int | str) -> int:
    """``auto``: one process per visible GPU (one on a machine without GPUs)."""
    if setting == "auto":
        return max(torch.cuda.device_count(), 1)
    try:
        count = int(setting)
    except ValueError:
        raise ConfigError(f"--nproc must be a positive integer or 'auto', got {setting!r}") from None
    if count < 1:
        raise ConfigError(f"--nproc must be a positive integer or 'auto', got {setting!r}")
    # One process per GPU (or per core on CPUs; a few per core still test DDP there): thousands would only be
    # processes fighting for the same devices.
    limit = max(torch.cuda.device_count(), 4 * (os.cpu_count() or 1))
    if count > limit:
        raise ConfigError(f"--nproc {count} is more than this node can use (at most {limit}: 4 per core or 1 per GPU)")
    return count


def launch(nproc: int, module: str, args: list[str]) -> None:
    """Run ``python -m module args`` in ``nproc`` processes on this node under torchrun; wait for all.

    ``--standalone`` picks a free rendezvous port on localhost, so several launches can share a node.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        module,
        *args,
    ]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // nproc)))
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"{nproc}-process run of {module} failed with exit code {completed.returncode}; each rank's error is above"
        )
