"""The pipeline through kfp.local's DockerRunner: every step runs in the step image, as a pod would.

``python -m pipeline.docker_run --preset smoke`` (and ``make e2e-docker``, through
tests/test_docker_e2e.py) runs what `autoft run` runs, with three differences from a plain
``local.DockerRunner``, each for a reason found the hard way:

- kfp 2.17.3 starts step containers with ``auto_remove=True`` and asks for the exit code afterwards;
  when the container is already gone it assumes 0, so a failed step can count as a success
  (kubeflow/pipelines#13332), and ``auto_remove=False`` cannot be passed (a duplicate keyword,
  TypeError). :class:`ExitCodeGuard` swaps in a container runner that keeps each container until its
  exit code is read, then removes it.
- Steps write outside pipeline_root (which kfp mounts): results.json, the Optuna journals and
  mlflow.db go to the run folder, and the built-in foundation model is read from (or built into) the
  host's cache. Both are bind-mounted at their host paths, so every path a step passes on stays valid.
- Containers run as the host user (files in the run folder stay yours, the host cache is readable)
  with HOME in /tmp, because the image's home belongs to its own user (uid 1000).

The step image is the components' ``base_image`` (``autoft-step:0.1.0``, or ``$AUTOFT_STEP_IMAGE`` when
the components are first imported). It must be built locally under that exact tag: kfp pulls whenever
the tag is missing, and this machine reaches no registry.
"""

from __future__ import annotations

import argparse
import codecs
import getpass
import hashlib
import inspect
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoft.config import AutoFTConfig, parse_assignments, parse_yaml
from autoft.contracts import Results
from autoft.errors import ConfigError

if TYPE_CHECKING:
    import docker
    from kfp import local

# The image's HOME (/home/autoft) belongs to uid 1000; other users get a writable one, as pods do.
CONTAINER_HOME = "/tmp"
# Host settings a step should see too (the test suite sets HF_HUB_OFFLINE so a hub lookup fails at once).
PASSED_THROUGH_ENV = ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What the guard replaces: kfp.local.docker_task_handler.run_docker_container (kfp==2.17.3).
GUARDED_SIGNATURE = ["client", "image", "command", "volumes", "container_run_args"]
# Arguments the guard sets itself; a caller's value would contradict it.
GUARD_OWNED_ARGS = ("auto_remove", "remove", "detach", "stdout", "stderr")
RESULT_KEYS = ("id_val", "id_test", "ood_avg")
# The image's installed code, digested file by file, to compare with this tree (see image_code_drift).
CODE_PACKAGES = {
    "autoft": ("*.py", "presets/*.yaml", "models/model_configs/*.json"),
    "pipeline": ("*.py",),
    "components": ("*.py",),
}
REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_PACKAGE_DIRS = {
    "autoft": REPO_ROOT / "src" / "autoft",
    "pipeline": REPO_ROOT / "pipeline",
    "components": REPO_ROOT / "components",
}


class DockerUnavailable(RuntimeError):
    """No Docker engine answers, or the step image is not built here: there is nothing to run steps in."""


class DockerRunError(RuntimeError):
    """A Docker run finished but its results are missing or out of range."""


@dataclass(frozen=True)
class ContainerRecord:
    """One step container: what the guard read from it before removing it."""

    image: str
    exit_code: int
    seconds: float


@dataclass
class DockerRunSummary:
    results: Results
    containers: list[ContainerRecord] = field(default_factory=list)
    wall_seconds: float = 0.0


def docker_client() -> docker.DockerClient:
    """A client for the local engine, or :class:`DockerUnavailable` saying why there is none."""
    try:
        import docker
    except ImportError as error:
        raise DockerUnavailable(f"the docker package is not installed ({error}); run `make setup`") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise DockerUnavailable(
            f"no Docker engine answers ({error}); start one, e.g. `dockerd --bridge=none --iptables=false "
            "--ip-masq=false &` (docs/deploy.md)"
        ) from None
    return client


def require_local_image(client: docker.DockerClient, image: str) -> None:
    """The image must exist under exactly this ``repo:tag``: that is kfp's test before it pulls."""
    name, _, tag = image.rpartition(":")
    if "@" in image or not name or "/" in tag:
        raise ConfigError(
            f"step image {image!r}: give an explicit repo:tag (kfp.local pulls digests and untagged names)"
        )
    if not any(image in found.tags for found in client.images.list(name=name)):
        raise DockerUnavailable(
            f"the step image {image!r} is not built on this machine; build it with `make images-offline` "
            "(no registry here) or `make images`, or point AUTOFT_STEP_IMAGE at a local tag"
        )


def _package_digests(roots: dict[str, Path]) -> dict[str, str]:
    digests = {}
    for package, root in roots.items():
        for pattern in CODE_PACKAGES[package]:
            for path in root.rglob(pattern) if pattern == "*.py" else root.glob(pattern):
                if "__pycache__" not in path.parts:
                    digests[f"{package}/{path.relative_to(root)}"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def image_code_drift(client: docker.DockerClient, image: str, limit: int = 5) -> list[str]:
    """Files of autoft/pipeline/components that differ between this tree and the image (at most ``limit``).

    The image's revision label cannot tell: untracked files do not make it "-dirty". A stale image
    tests old code, and a changed pretraining recipe means its key misses the host cache, so a step
    would quietly spend an hour rebuilding the foundation model.
    """
    script = (
        "import hashlib, importlib.util, json, pathlib\n"
        f"patterns = {CODE_PACKAGES!r}\n"
        "out = {}\n"
        "for package, globs in patterns.items():\n"
        "    spec = importlib.util.find_spec(package)\n"
        "    if spec is None:\n"
        "        continue\n"
        "    root = pathlib.Path(list(spec.submodule_search_locations)[0])\n"
        "    for pattern in globs:\n"
        "        for path in (root.rglob(pattern) if pattern == '*.py' else root.glob(pattern)):\n"
        "            if '__pycache__' not in path.parts:\n"
        "                out[f'{package}/{path.relative_to(root)}'] = hashlib.sha256(path.read_bytes()).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    output = client.containers.run(
        image, ["python3", "-c", script], network_mode="none", user=f"{os.getuid()}:{os.getgid()}", remove=True
    )
    in_image = json.loads(output)
    here = _package_digests(HOST_PACKAGE_DIRS)
    differing = sorted(path for path in here.keys() | in_image.keys() if here.get(path) != in_image.get(path))
    return differing[:limit] + ([f"... {len(differing) - limit} more"] if len(differing) > limit else [])


class KillOnLogLine:
    """Preemption on cue: the first container whose log matches ``pattern`` gets SIGKILL ``delay_s`` later,
    as a node lost mid-step would; kfp.local's retry policy then starts the step again."""

    def __init__(self, pattern: str, delay_s: float = 1.0) -> None:
        self.pattern = re.compile(pattern)
        self.delay_s = delay_s
        self.killed: list[str] = []  # container ids
        self.matched_line = ""
        self._lock = threading.Lock()

    def __call__(self, container: Any, line: str) -> None:
        with self._lock:
            if self.killed or not self.pattern.search(line):
                return
            self.killed.append(container.id)
            self.matched_line = line.strip()
        timer = threading.Timer(self.delay_s, container.kill)  # SIGKILL: no handler, no clean-up runs
        timer.daemon = True
        timer.start()


class ExitCodeGuard:
    """While active, kfp.local's Docker steps report their containers' real exit codes.

    It replaces ``kfp.local.docker_task_handler.run_docker_container`` (looked up by name at each call)
    with :meth:`run_container`, which keeps the container until ``wait()`` has returned its exit code;
    the container is removed afterwards in any case, a running one included (Ctrl-C). Every container
    is recorded in :attr:`containers`. A tagged image must be built locally (it is never pulled); an image
    named by digest is pulled from its registry once, as a node would (``pull_digests``). ``on_line`` sees
    every log line of every container (e.g. :class:`KillOnLogLine`).
    """

    def __init__(self, pull_digests: bool = False, on_line: Callable[[Any, str], None] | None = None) -> None:
        self.containers: list[ContainerRecord] = []
        self.pulled: dict[str, str] = {}  # digest reference -> local image id
        self.pull_digests = pull_digests
        self.on_line = on_line
        self._lock = threading.Lock()
        self._original: Any = None

    def __enter__(self) -> ExitCodeGuard:
        from kfp.local import docker_task_handler

        original = docker_task_handler.run_docker_container
        found = list(inspect.signature(original).parameters)
        if found != GUARDED_SIGNATURE:
            # A kfp upgrade changed what we replace: check whether #13332 is fixed before adapting.
            raise RuntimeError(
                f"kfp.local.docker_task_handler.run_docker_container takes {found}, not {GUARDED_SIGNATURE}; "
                "pipeline/docker_run.py's ExitCodeGuard was written for kfp 2.17.3 (kubeflow/pipelines#13332)"
            )
        self._original = original
        docker_task_handler.run_docker_container = self.run_container
        return self

    def __exit__(self, *exc_info: object) -> None:
        from kfp.local import docker_task_handler

        docker_task_handler.run_docker_container = self._original

    def _ensure_image(self, client: docker.DockerClient, image: str) -> None:
        if not (self.pull_digests and "@sha256:" in image):
            require_local_image(client, image)
            return
        with self._lock:
            if image not in self.pulled:
                self.pulled[image] = client.images.pull(image).id

    def run_container(
        self, client: docker.DockerClient, image: str, command: list[str], volumes: dict[str, Any], **run_args: Any
    ) -> int:
        self._ensure_image(client, image)
        for name in GUARD_OWNED_ARGS:
            run_args.pop(name, None)
        start = time.perf_counter()
        container = client.containers.run(
            image=image, command=command, volumes=volumes, detach=True, auto_remove=False, **run_args
        )
        # One line per container in the task's log: proof that the step ran in the image, and which one.
        print(f"step container from {image}: {container.short_id}")
        try:
            # print, not sys.stdout: kfp.local swaps builtins.print per task to indent and attribute the lines.
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            pending = ""
            for chunk in container.logs(stream=True, follow=True):
                text = decoder.decode(chunk)
                if text:
                    print(text, end="")
                    if self.on_line is not None:
                        *lines, pending = (pending + text).replace("\r", "\n").split("\n")
                        for line in lines:
                            self.on_line(container, line)
            exit_code = int(container.wait()["StatusCode"])
        finally:
            container.remove(force=True)
        with self._lock:
            self.containers.append(ContainerRecord(image, exit_code, round(time.perf_counter() - start, 3)))
        return exit_code


def docker_runner(
    run_dir: Path,
    cache_dir: Path,
    *,
    user: str,
    network_mode: str = "host",
    environment: dict[str, str] | None = None,
) -> local.DockerRunner:
    """A DockerRunner whose steps see the run folder and the cache at their host paths, as ``user``."""
    from docker.types import Mount
    from kfp import local

    from autoft.paths import CACHE_ENV

    env = {key: os.environ[key] for key in PASSED_THROUGH_ENV if os.environ.get(key)}
    # getpass/pwd find no entry for a host uid the image does not know; LOGNAME/USER come first.
    login = getpass.getuser()
    env.update({"HOME": CONTAINER_HOME, "USER": login, "LOGNAME": login, CACHE_ENV: str(cache_dir)})
    env.update(environment or {})
    mounts = [Mount(target=str(path), source=str(path), type="bind") for path in (run_dir, cache_dir)]
    return local.DockerRunner(user=user, network_mode=network_mode, mounts=mounts, environment=env)


def run_with_kfp_docker(
    config: AutoFTConfig,
    run_dir: Path,
    *,
    cache_dir: Path | None = None,
    user: str | None = None,
    network_mode: str = "host",
    environment: dict[str, str] | None = None,
    search_workers: int | None = None,
    parameters: dict[str, Any] | None = None,
    echo: bool = True,
) -> DockerRunSummary:
    """Run the whole pipeline into ``run_dir`` with every step in the step image; see the module docstring.

    ``cache_dir`` defaults to the host's AUTOFT_CACHE (``autoft.paths.default_cache_dir``), so a
    foundation model built by `autoft run` or `autoft pretrain` here is reused, and one built by a step
    stays for the next run. ``user`` defaults to the host's uid:gid; another user needs write access to
    the run folder and the cache. ``network_mode`` "host" lets steps reach services on this machine
    (an MLflow server); "none" proves a run needs no network.
    """
    from components.image import STEP_IMAGE

    from autoft.paths import default_cache_dir
    from autoft.threads import PARALLEL_TASKS_ENV
    from pipeline.autoft_pipeline import DEFAULT_SEARCH_WORKERS
    from pipeline.local_run import local_arguments, local_parallel_tasks, run_with_kfp_local

    client = docker_client()
    try:
        require_local_image(client, STEP_IMAGE)
    finally:
        client.close()
    run_dir = Path(run_dir).resolve()
    cache_dir = Path(cache_dir or default_cache_dir()).resolve()
    workers = DEFAULT_SEARCH_WORKERS if search_workers is None else search_workers
    # Made here, by the host user, before any container writes into them (the DESIGN's Docker notes).
    run_dir.mkdir(parents=True, exist_ok=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A storage URL with a password reaches steps through the environment, as local_run does for subprocesses.
    _, secret_env = local_arguments(config, run_dir, workers)
    runner = docker_runner(
        run_dir,
        cache_dir,
        user=user or f"{os.getuid()}:{os.getgid()}",
        network_mode=network_mode,
        # The containers share this machine's cores as subprocess steps do (autoft.threads).
        environment={PARALLEL_TASKS_ENV: str(local_parallel_tasks()), **secret_env, **(environment or {})},
    )
    start = time.perf_counter()
    with ExitCodeGuard() as guard:
        results = run_with_kfp_local(
            config, run_dir, search_workers=workers, parameters=parameters, echo=echo, runner=runner
        )
    failed = [record for record in guard.containers if record.exit_code != 0]
    if failed:
        # kfp.local would have stopped at a failed step; reaching here means its result was misread.
        raise DockerRunError(f"{len(failed)} step container(s) exited non-zero but the run passed: {failed}")
    return DockerRunSummary(results, list(guard.containers), round(time.perf_counter() - start, 1))


def check_results(results: Results, methods: list[str]) -> None:
    """results.json as the e2e expects it: every method, OOD results, every value a number in [0, 1].

    The schema itself was checked when the file was loaded (:class:`autoft.contracts.Results`).
    """
    problems = []
    missing = [method for method in methods if method not in results.methods]
    if missing:
        problems.append(f"methods missing: {missing} (present: {sorted(results.methods)})")
    for method, row in results.methods.items():
        values = {key: getattr(row, key) for key in RESULT_KEYS}
        values.update({f"ood.{shift}": value for shift, value in row.ood.items()})
        if not row.ood:
            problems.append(f"{method}: no OOD results")
        for key, value in values.items():
            if not isinstance(value, int | float) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                problems.append(f"{method}.{key} = {value!r} is not a number in [0, 1]")
    if problems:
        raise DockerRunError("results.json failed its checks:\n  " + "\n  ".join(problems))


def _key_values(items: list[str], option: str, parse: bool) -> dict[str, Any]:
    pairs = parse_assignments(items, option, "KEY=VALUE")
    return {key: parse_yaml(text, f"{option} {key}") if parse and text.strip() else text for key, text in pairs.items()}


def build_parser() -> argparse.ArgumentParser:
    from autoft.cli import add_config_arguments

    parser = argparse.ArgumentParser(
        prog="python -m pipeline.docker_run",
        description="Run the AutoFT pipeline through kfp.local's DockerRunner: every step in the step image "
        "(autoft-step:0.1.0 unless --image / $AUTOFT_STEP_IMAGE), then check results.json (schema "
        "autoft.results/v1, every method, values in [0, 1]). Exits non-zero if a step fails.",
    )
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, help="run folder (default: runs/docker-<preset>-<timestamp>)")
    parser.add_argument("--image", help="a locally built step image, repo:tag (sets AUTOFT_STEP_IMAGE)")
    parser.add_argument("--cache-dir", type=Path, help="host folder for AUTOFT_CACHE (default: the host's own)")
    parser.add_argument("--user", help="uid:gid the steps run as (default: yours)")
    parser.add_argument("--network", default="host", choices=["host", "none"], help="the containers' network")
    parser.add_argument("--search-workers", type=int, help="search workers per method (default: the pipeline's)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="another pipeline parameter, value as YAML, e.g. --param gate_min_gain=-1",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="an extra environment variable for steps"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run, check and summarise; a failed step or check prints its reason and returns 1 (no traceback)."""
    args = build_parser().parse_args(argv)
    if args.image:
        # Read by components/image.py when the components are first imported, which happens below.
        if "components.image" in sys.modules and args.image != sys.modules["components.image"].STEP_IMAGE:
            print(f"--image {args.image!r}: the components were already loaded with another image", file=sys.stderr)
            return 1
        os.environ["AUTOFT_STEP_IMAGE"] = args.image
    from pipeline.local_run import PipelineRunError

    try:
        return _run_and_check(args)
    except (ConfigError, DockerUnavailable, DockerRunError, PipelineRunError) as error:
        print(f"docker run failed: {error}", file=sys.stderr)
        return 1


def _run_and_check(args: argparse.Namespace) -> int:
    from autoft.cli import config_from_args
    from autoft.config import DEFAULT_PRESET

    config = config_from_args(args, DEFAULT_PRESET)
    run_dir = args.out or Path("runs") / f"docker-{config.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    from components.image import STEP_IMAGE

    client = docker_client()
    try:
        require_local_image(client, STEP_IMAGE)
        drift = image_code_drift(client, STEP_IMAGE)
    finally:
        client.close()
    if drift:
        print(
            f"WARNING: {STEP_IMAGE} holds other code than this tree ({', '.join(drift)}); "
            "rebuild it (`make images-offline IMAGES=step`) to test this code",
            file=sys.stderr,
        )
    summary = run_with_kfp_docker(
        config,
        run_dir,
        cache_dir=args.cache_dir,
        user=args.user,
        network_mode=args.network,
        environment=_key_values(args.env, "--env", parse=False),
        search_workers=args.search_workers,
        parameters=_key_values(args.param, "--param", parse=True),
    )
    check_results(summary.results, list(config.methods))
    from autoft.report import format_table

    seconds = [record.seconds for record in summary.containers]
    print()
    print(format_table(summary.results))
    print(
        f"\n{len(seconds)} step containers from {STEP_IMAGE}, all exit code 0 "
        f"({sum(seconds) / max(len(seconds), 1):.1f} s each on average); wall time {summary.wall_seconds:.1f} s"
    )
    print(f"results.json checked (schema, {len(config.methods)} methods, values in [0, 1]); run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
