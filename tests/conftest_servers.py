"""Pytest fixtures that start real servers (see servers.py); load with ``pytest_plugins``.

Servers are session-scoped (an mlflow server takes ~8 s to start) but the environment that points a
client at them (STORAGE_EMULATOR_HOST, MLFLOW_TRACKING_URI) is set per test with monkeypatch, so
tests outside this set never see it.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from autoft.urls import database_url
from servers import (
    ServerProcess,
    create_bucket,
    postgres_admin_url,
    start_fake_gcs,
    start_mlflow_server,
    temporary_database,
    wait_for_mlflow,
)

MLFLOW_ARTIFACT_BUCKET = "autoft-mlflow"


@dataclass
class GcsEmulator:
    server: ServerProcess

    @property
    def url(self) -> str:
        return self.server.url

    def new_bucket(self, prefix: str = "autoft-test") -> str:
        """A fresh bucket per test, so tests never see each other's objects."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        create_bucket(self.url, name)
        return name


@pytest.fixture(scope="session")
def fake_gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_fake_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield server
    server.stop()


@pytest.fixture
def gcs(fake_gcs_server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    """The emulator, with STORAGE_EMULATOR_HOST pointing at it for this test only."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs_server.url)
    return GcsEmulator(fake_gcs_server)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, fake_gcs_server: ServerProcess) -> Iterator[ServerProcess]:
    """``mlflow server`` as a cluster runs it: a PostgreSQL backend store (SQLite where the tests have no
    PostgreSQL) and proxied artifacts in gs:// on the emulator; the server, not the client, gets the
    emulator's address, as it would get the bucket's credentials."""
    workdir = tmp_path_factory.mktemp("mlflow")
    create_bucket(fake_gcs_server.url, MLFLOW_ARTIFACT_BUCKET)
    with contextlib.ExitStack() as stack:
        admin_url = postgres_admin_url()
        backend = (
            database_url(stack.enter_context(temporary_database(admin_url, prefix="autoft_test_mlflow")))
            if admin_url
            else f"sqlite:///{workdir / 'mlflow.db'}"
        )
        server = start_mlflow_server(
            backend,
            f"gs://{MLFLOW_ARTIFACT_BUCKET}/artifacts",
            workdir,
            env={"STORAGE_EMULATOR_HOST": fake_gcs_server.url},
            wait=False,
        )
        try:
            yield wait_for_mlflow(server)
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = postgres_admin_url()
    if not url:
        pytest.skip("AUTOFT_TEST_POSTGRES_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return url


@pytest.fixture
def postgres_db(postgres_url: str) -> Iterator[str]:
    """A database of its own for one test (created, then dropped with its connections)."""
    with temporary_database(postgres_url) as url:
        yield url
