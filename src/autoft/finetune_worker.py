"""The program each torchrun process of a multi-process fine-tuning step runs.

``python -m autoft.finetune_worker JOB`` (started by :func:`autoft.stages.stage_finetune` with
``nproc`` > 1, through :func:`autoft.distributed.launch`): read the job, then run the step as this
process's rank. A module of its own so that the stages never import what launches them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from autoft.config import validate_config
from autoft.contracts import FinetuneJob
from autoft.curve_file import CURVES_FILE, CurveFile
from autoft.distributed import die_with_parent
from autoft.stages import stage_finetune
from autoft.termination import terminated_exits_143


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m autoft.finetune_worker JOB_FILE (started by torchrun)", file=sys.stderr)
        return 2
    die_with_parent()
    terminated_exits_143()  # torchrun forwards SIGTERM to its ranks: they unwind like Ctrl-C and exit 143
    job = FinetuneJob.load(args[0])
    stage_finetune(
        validate_config(job.config),
        Path(job.data_dir),
        Path(job.zeroshot_dir),
        job.method,
        job.hparams,
        Path(job.out_dir),
        resume=job.resume,
        progress=job.progress,
        observer=CurveFile(Path(job.out_dir) / "train" / CURVES_FILE) if job.record_curves else None,
        durable_root=job.durable_root,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
