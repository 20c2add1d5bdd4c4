"""Build the project as pip builds it for a user, and fail when the build warns about a deprecation.

setuptools announces removals years ahead (`project.license` as a TOML table: "By 2027-Feb-18 ... your builds
will no longer be supported"), and pip builds with the newest setuptools, so a deprecation the build prints
today is a fresh clone that stops building later. `make lint` runs this: both builds `make setup` relies on
(the wheel, and the editable install into a throwaway venv), each in pip's isolated build environment.

    python tests/build_check.py [PROJECT_DIR]      # exit 1 and the offending lines on a deprecation warning
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import sysconfig
import tempfile
import venv
from dataclasses import dataclass
from pathlib import Path

# Matches "deprecated", "deprecation", "SetuptoolsDeprecationWarning", "DeprecationWarning", ...
DEPRECATION = re.compile(r"deprecat", re.IGNORECASE)


@dataclass(frozen=True)
class BuildResult:
    kind: str  # "wheel" or "editable"
    returncode: int
    output: str

    @property
    def deprecations(self) -> list[str]:
        return [line.strip() for line in self.output.splitlines() if DEPRECATION.search(line)]


def _pip(args: list[str], *, isolation: bool) -> subprocess.Popen[str]:
    # -v: pip shows everything the build backend prints (warnings included) whatever its default verbosity.
    command = [sys.executable, "-m", "pip", "-v", "--disable-pip-version-check", *args]
    if not isolation:
        command.append("--no-build-isolation")
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(kind: str, process: subprocess.Popen[str]) -> BuildResult:
    output, _ = process.communicate()
    return BuildResult(kind, process.returncode, output)


def build(project: Path, *, isolation: bool = True) -> list[BuildResult]:
    """The wheel build and the editable install of `project`, with everything each printed."""
    project = project.resolve()
    with tempfile.TemporaryDirectory(prefix="build-check-") as scratch:
        # The editable install goes into a throwaway venv (no pip of its own: this pip installs into it).
        target = Path(scratch, "venv")
        venv.EnvBuilder(with_pip=False).create(target)
        if not isolation:
            # Without isolation the backend runs in the target's interpreter: let it see this environment's setuptools.
            target_site = Path(sysconfig.get_path("purelib", vars={"base": str(target), "platbase": str(target)}))
            (target_site / "build_check_parent.pth").write_text(sysconfig.get_path("purelib") + "\n")
        # Both builds at once: each spends most of its time setting up its own isolated build environment.
        wheel = _pip(
            ["wheel", "--no-deps", "--wheel-dir", str(Path(scratch, "wheel")), str(project)], isolation=isolation
        )
        editable = _pip(
            ["--python", str(target / "bin" / "python"), "install", "--no-deps", "--editable", str(project)],
            isolation=isolation,
        )
        return [_result("wheel", wheel), _result("editable", editable)]


def problems(results: list[BuildResult]) -> list[str]:
    """One message per failed build or deprecation line; empty when every build is clean."""
    found: list[str] = []
    for result in results:
        if result.returncode != 0:
            tail = "\n    ".join(result.output.strip().splitlines()[-30:])
            found.append(f"{result.kind} build failed (exit {result.returncode}):\n    {tail}")
        found.extend(f"{result.kind} build: {line}" for line in result.deprecations)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", nargs="?", default=".", type=Path, help="the project folder (default: .)")
    parser.add_argument(
        "--no-build-isolation",
        dest="isolation",
        action="store_false",
        help="build with this environment's setuptools instead of pip's isolated, newest one",
    )
    args = parser.parse_args(argv)
    found = problems(build(args.project, isolation=args.isolation))
    if found:
        print(
            "build-check: the project's build prints a deprecation warning or fails; fix pyproject.toml:",
            file=sys.stderr,
        )
        for message in found:
            print(f"  {message}", file=sys.stderr)
        return 1
    print("build-check: wheel and editable builds print no deprecation warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
