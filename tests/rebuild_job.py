"""The full foundation-model rebuild as a background job of the test session.

The rebuild takes about 10 minutes on one thread (610 s CPU here), as long as the rest of the suite.
``make test`` starts it when the session's items are chosen, on one thread beside the other tests, and
its test runs last and collects it, so the suite grows by far less than the rebuild's own time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REBUILD_TEST = "test_full_rebuild_reproduces_the_shipped_model"
TIMEOUT_S = 1800

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from autoft.models.pretrain import DEFAULT_RECIPE, file_sha256, foundation_model
    path = foundation_model(Path(sys.argv[1]), progress=False, recipe=DEFAULT_RECIPE, use_shipped=False)
    record = json.loads(path.with_suffix(".json").read_text())
    print(json.dumps({"path": str(path), "sha256": file_sha256(path), "seconds": record["build_seconds"]}))
    """
)


@dataclass
class RebuildJob:
    """A rebuild running in a subprocess with one thread; ``result()`` waits for its JSON line."""

    folder: Path
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    _out: IO[bytes] | None = None
    _err: IO[bytes] | None = None

    @classmethod
    def start(cls) -> RebuildJob:
        folder = Path(tempfile.mkdtemp(prefix="autoft-rebuild-"))
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "AUTOFT_CACHE": str(folder / "cache"),
            "HF_HUB_OFFLINE": "1",
        }
        out, err = open(folder / "stdout", "wb"), open(folder / "stderr", "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-c", SCRIPT, str(folder / "build")]
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        return cls(folder, process, _out=out, _err=err)

    def result(self) -> dict:
        """The rebuilt model's path, SHA-256 and build seconds; raises with its stderr if it failed."""
        left = TIMEOUT_S - (time.monotonic() - self.started)
        code = self.process.wait(timeout=max(left, 1))
        self._close()
        if code != 0:
            raise RuntimeError(f"rebuild exited {code}: {(self.folder / 'stderr').read_text()[-3000:]}")
        return json.loads((self.folder / "stdout").read_text().strip().splitlines()[-1])

    def _close(self) -> None:
        for handle in (self._out, self._err):
            if handle is not None:
                handle.close()

    def stop(self) -> None:
        """End the job (if the session ends first) and remove its folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()
        shutil.rmtree(self.folder, ignore_errors=True)
