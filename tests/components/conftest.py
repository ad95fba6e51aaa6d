"""MLflow fixtures: an embedded sqlite store per test, a real ``mlflow server`` with S3 artifacts
(moto) per session, and a tiny network with random weights (the ``ci`` preset's).

Nothing touches the repository's ``mlflow.db``: every store lives under pytest's tmp folder and
the tracking URI reaches MLflow only through the steps' ``tracking_uri`` argument.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import torch
from torch import nn

from model_lib.models import build_model
from model_lib.presets import ExperimentConfig, get_preset
from tests.conftest import S3_ENV

SERVER_START_TIMEOUT_S = 90.0


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Small convolutions on a shared, busy CPU run faster on one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ci_config() -> ExperimentConfig:
    return get_preset("ci")


@pytest.fixture(scope="session")
def network(ci_config: ExperimentConfig) -> nn.Module:
    """The ci network with seeded random weights, in eval mode."""
    torch.manual_seed(7)
    return build_model(ci_config.model).eval()


@pytest.fixture(scope="session")
def weights_file(network: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``torch.save(network.state_dict())``."""
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow sqlite database: migrating takes seconds, copying it does not."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("template-db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    SqlAlchemyStore(uri, str(folder / "artifacts"))
    RegistryStore(uri)
    return folder / "mlflow.db"


@dataclass(frozen=True)
class Backend:
    """Where a test's registry lives: the tracking URI, and for an embedded store the folder
    new experiments keep their artifacts in (a server decides that itself)."""

    tracking_uri: str
    artifact_location: str | None = None


@pytest.fixture
def sqlite_backend(tmp_path: Path, migrated_db: Path) -> Backend:
    shutil.copyfile(migrated_db, tmp_path / "mlflow.db")
    return Backend(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class MlflowServer:
    url: str
    bucket: str
    s3_endpoint: str


class ServerProcess:
    """``mlflow server`` in a subprocess on 127.0.0.1: sqlite backend ``folder/srv.db``,
    artifacts proxied to an S3 bucket. :meth:`stop` and :meth:`start` again keep the port and
    the store, as a restarted deployment would."""

    def __init__(self, folder: Path, bucket: str, s3_endpoint: str) -> None:
        self.folder, self.bucket, self.s3_endpoint = folder, bucket, s3_endpoint
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self) -> None:
        """Start and wait until ``/health`` answers; its log is shown if it does not."""
        env = {
            **os.environ,
            **S3_ENV,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "MLFLOW_ENABLE_TELEMETRY": "false",
            # No background job runner: one process fewer to start and to stop.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        env.pop("MLFLOW_TRACKING_URI", None)
        self._log = open(self.folder / "server.log", "ab")  # noqa: SIM115 (closed in stop)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.folder / 'srv.db'}",
            "--artifacts-destination",
            f"s3://{self.bucket}/",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # Its own process group: the CLI runs uvicorn as a child, which must not outlive it.
        self.process = subprocess.Popen(
            command,
            cwd=self.folder,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited {self.process.returncode}:\n"
                            f"{_tail(self.folder)}")  # fmt: skip
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return
            except requests.RequestException:
                pass  # not listening yet, or busy starting
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S}s:\n"
                            f"{_tail(self.folder)}")  # fmt: skip
            time.sleep(0.25)

    def stop(self) -> None:
        """Stop it (and its uvicorn child); nothing listens on the port afterwards."""
        if self.process is not None:
            self.process.terminate()  # the CLI forwards SIGTERM to uvicorn and waits for it
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _new_server(folder: Path, bucket: str, s3_endpoint: str, migrated_db: Path) -> ServerProcess:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    # Starting from a migrated copy saves the server seconds of start-up.
    shutil.copyfile(migrated_db, folder / "srv.db")
    return ServerProcess(folder, bucket, s3_endpoint)


@pytest.fixture(scope="session")
def mlflow_server(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory, migrated_db: Path
) -> Iterator[MlflowServer]:
    """``mlflow server`` in a subprocess on 127.0.0.1: sqlite backend (starting from a migrated
    copy saves the server seconds of start-up), artifacts proxied to a moto S3 bucket. Its log
    is shown if it does not come up."""
    # moto logs every S3 request at INFO; thousands of lines would bury a failure's output.
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    bucket = "mlflow-artifacts"
    server = _new_server(tmp_path_factory.mktemp("mlflow-server"), bucket, s3_endpoint,
                         migrated_db)  # fmt: skip
    try:
        server.start()
        yield MlflowServer(url=server.url, bucket=bucket, s3_endpoint=s3_endpoint)
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture
def restartable_mlflow_server(
    s3_endpoint: str, tmp_path: Path, migrated_db: Path
) -> Iterator[ServerProcess]:
    """A server of this test's own, not started yet: the test stops and starts it at will
    (same port, same store); it is stopped at the end."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    folder = tmp_path / "mlflow-server"
    folder.mkdir()
    bucket = f"restartable-{uuid.uuid4().hex[:12]}"  # S3 names: lower case, no underscores
    server = _new_server(folder, bucket, s3_endpoint, migrated_db)
    try:
        yield server
    finally:
        server.stop()
        werkzeug.setLevel(level)


def _tail(folder: Path, n: int = 4000) -> str:
    return (folder / "server.log").read_bytes()[-n:].decode(errors="replace")


@pytest.fixture(params=["sqlite", "http"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """The same flow on an embedded sqlite store and through the HTTP server."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_backend")
    server: MlflowServer = request.getfixturevalue("mlflow_server")
    return Backend(server.url)


@pytest.fixture
def model_name(request: pytest.FixtureRequest) -> str:
    """A registered model name of this test's own: tests on the shared server must not see each
    other's versions."""
    return "cxr-gaze-" + re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")


def s3_keys(server: MlflowServer) -> list[str]:
    """Every object key in the server's artifact bucket."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=server.s3_endpoint)
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=server.bucket):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys
