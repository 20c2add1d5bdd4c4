"""A real headless Chromium (Debian's ``chromium`` package, `make browser-deps`) for UI tests.

Pages are rendered with ``--dump-dom`` (the DOM after the page's scripts ran, for assertions) or
``--screenshot``; ``--virtual-time-budget`` lets a single-page app finish its requests first. The
flags keep Chromium off the network: this machine has none, and its background calls would stall.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import pytest

REQUIRE_ENV = "AUTOFT_REQUIRE_BROWSER"  # set by .ci/run: there the browser test must run, not skip
FLAGS = (
    "--headless",
    "--no-sandbox",  # as root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def require_chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        message = "Debian's chromium is not installed: run `make browser-deps` (as root)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _chromium(url: str, *extra: str, size: tuple[int, int], budget_ms: int) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="autoft-chromium-") as profile:
        return subprocess.run(
            [
                require_chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}",
                *extra,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=True,
        )


def page_text(url: str, *, size: tuple[int, int] = (1600, 1200), budget_ms: int = 30_000) -> str:
    """The visible text of a page once its scripts ran (styles and tags stripped, spaces collapsed)."""
    dom = _chromium(url, "--dump-dom", size=size, budget_ms=budget_ms).stdout
    text = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def screenshot(url: str, path: Path, *, size: tuple[int, int] = (1600, 2000), budget_ms: int = 30_000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _chromium(url, f"--screenshot={path}", size=size, budget_ms=budget_ms)
    return path


def mlflow_page(base: str, route: str) -> str:
    """A page of the MLflow UI in its model-training view (``workflowType=machine_learning``): MLflow 3's
    UI otherwise opens experiments in its GenAI view (a per-browser setting the URL overrides)."""
    separator = "&" if "?" in route else "?"
    return f"{base}/#{route}{separator}workflowType=machine_learning"


def compare_route(run_ids: list[str], experiment_id: str) -> str:
    runs = quote("[" + ",".join(f'"{run}"' for run in run_ids) + "]")
    experiments = quote(f'["{experiment_id}"]')
    return f"/compare-runs?runs={runs}&experiments={experiments}"
