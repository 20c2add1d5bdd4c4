"""The build check `make lint` runs (tests/build_check.py): it must catch a deprecation the build prints, pass a
clean build, and the project's own pyproject.toml must stay in the form that builds without one.

The tiny projects build without isolation (this venv's setuptools, no registry); `make lint` builds the real project
with isolation, as pip does for a user.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from build_check import build, main, problems

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # a few seconds: two pip builds per project


def _project(folder: Path, license_line: str, extra: str = "") -> Path:
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=77"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "tiny-build-check"\nversion = "0.1.0"\n{license_line}\n{extra}\n'
        '[tool.setuptools]\npy-modules = ["tiny_build_check"]\n'
    )
    (folder / "tiny_build_check.py").write_text("VALUE = 1\n")
    (folder / "LICENSE").write_text("Apache License, Version 2.0\n")
    return folder


def test_a_deprecated_license_table_is_reported_for_both_builds(tmp_path: Path) -> None:
    project = _project(tmp_path / "old", 'license = { text = "Apache-2.0" }')
    results = build(project, isolation=False)
    assert [result.kind for result in results] == ["wheel", "editable"]
    assert all(result.returncode == 0 for result in results), [result.output[-2000:] for result in results]
    found = problems(results)
    for kind in ("wheel", "editable"):
        assert any(line.startswith(f"{kind} build:") and "project.license" in line for line in found), found


def test_a_failing_build_is_reported_with_its_output(tmp_path: Path) -> None:
    project = _project(tmp_path / "broken", 'license = "Apache-2.0"', 'dependencies = "not-a-list"')
    found = problems(build(project, isolation=False))
    assert any(message.startswith("wheel build failed (exit ") for message in found), found
    assert any(message.startswith("editable build failed (exit ") for message in found), found
    assert "dependencies" in "\n".join(found)


def test_a_license_file_that_matches_nothing_is_reported(tmp_path: Path) -> None:
    # setuptools warns (a deprecation: an error in a later release) rather than failing today.
    project = _project(tmp_path / "missing", 'license = "Apache-2.0"', 'license-files = ["NO-SUCH-FILE"]')
    assert problems(build(project, isolation=False))


def test_main_exits_1_and_prints_the_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path / "old", 'license = { text = "Apache-2.0" }')
    assert main([str(project), "--no-build-isolation"]) == 1
    err = capsys.readouterr().err
    assert "build-check:" in err and "`project.license` as a TOML table is deprecated" in err


def test_main_exits_0_on_a_clean_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path / "new", 'license = "Apache-2.0"')
    assert main([str(project), "--no-build-isolation"]) == 0
    assert "no deprecation warning" in capsys.readouterr().out


def test_the_project_declares_its_license_as_an_spdx_string() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "Apache-2.0"
    for pattern in pyproject["project"].get("license-files", []):
        assert list(ROOT.glob(pattern)), f"license-files entry {pattern!r} matches no file"
    # setuptools < 77 rejects an SPDX string: the build requirement must not allow one.
    assert "setuptools>=77" in pyproject["build-system"]["requires"]
