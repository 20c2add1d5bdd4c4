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


@dataclass
class _MlflowLaunches:
    sqlite: ServerProcess
    postgres: ServerProcess | None


@pytest.fixture(scope="session")
def _mlflow_launches(
    tmp_path_factory: pytest.TempPathFactory, fake_gcs_server: ServerProcess
) -> Iterator[_MlflowLaunches]:
    """Launch both mlflow servers at once (each spends ~10 s importing and migrating), wait later."""
    workdir = tmp_path_factory.mktemp("mlflow")
    create_bucket(fake_gcs_server.url, MLFLOW_ARTIFACT_BUCKET)
    # SQLite backend; proxied artifacts in gs:// on the emulator. The server process, not the test,
    # writes them, so it gets the emulator address.
    sqlite = start_mlflow_server(
        f"sqlite:///{workdir / 'mlflow.db'}",
        f"gs://{MLFLOW_ARTIFACT_BUCKET}/artifacts",
        workdir,
        env={"STORAGE_EMULATOR_HOST": fake_gcs_server.url},
        wait=False,
    )
    with contextlib.ExitStack() as stack:
        postgres = None
        admin_url = postgres_admin_url()
        if admin_url:
            # PostgreSQL backend store in a database of its own; artifacts on local disk.
            url = stack.enter_context(temporary_database(admin_url, prefix="autoft_test_mlflow"))
            postgres = start_mlflow_server(database_url(url), str(workdir / "pg-artifacts"), workdir, wait=False)
        try:
            yield _MlflowLaunches(sqlite, postgres)
        finally:
            for server in (sqlite, postgres):
                if server is not None:
                    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(_mlflow_launches: _MlflowLaunches) -> ServerProcess:
    """``mlflow server`` on SQLite whose proxied artifacts live in gs:// on the emulator."""
    return wait_for_mlflow(_mlflow_launches.sqlite)


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


@pytest.fixture(scope="session")
def mlflow_server_postgres(postgres_url: str, _mlflow_launches: _MlflowLaunches) -> ServerProcess:
    """``mlflow server`` whose backend store is PostgreSQL (its own database), artifacts on disk."""
    assert _mlflow_launches.postgres is not None
    return wait_for_mlflow(_mlflow_launches.postgres)
