"""Fault-injection fixtures: the ci preset's tiny store, and an S3 server (moto, in this process)
that a test can stop and start again on the same port while a client is mid-transfer."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

from model_lib.presets import get_preset
from tests.conftest import S3_ENV


@pytest.fixture(scope="session")
def ci_store(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny release ingested with the ci preset's data config: (store, maps)."""
    from components.heatmaps import run_heatmaps
    from components.ingest import run_ingest

    data = get_preset("ci").data
    out = tmp_path_factory.mktemp("faults-data")
    store = run_ingest(
        tiny_release / "egd-cxr", tiny_release / "mimic-cxr", out / "store", data,
        workers=1, progress=False,
    ).store  # fmt: skip
    maps = run_heatmaps(store, out / "maps", data, progress=False).out_dir
    return store, maps


class FlakyS3:
    """A moto S3 server on 127.0.0.1 that can go down and come back on the same port.

    moto keeps its buckets in process-wide backends, so a new server on the old port serves
    what the old one held: to a client it looks like an S3 endpoint that went away for a while.
    """

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        self.host, self.port = self._server.get_host_and_port()
        self.up = True
        self.events: list[tuple[str, float]] = []
        # moto's state outlives a server: a bucket of one's own keeps tests apart.
        self.bucket = f"faults-{uuid.uuid4().hex[:12]}"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.up:
            self._server.stop()
            self.up = False
            self.events.append(("stop", time.monotonic()))

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if not self.up:
            self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
            self._server.start()
            self.up = True
            self.events.append(("start", time.monotonic()))

    def outage_when(
        self, ready: Callable[[], bool], down_s: float | None, *, timeout_s: float = 60.0
    ) -> threading.Thread:
        """In a background thread: wait until ``ready()`` is true, stop the server, keep it
        down ``down_s`` seconds (forever if None), start it again. Join the thread to wait."""

        def run() -> None:
            deadline = time.monotonic() + timeout_s
            while not ready():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            self.stop()
            if down_s is not None:
                time.sleep(down_s)
                self.start()

        thread = threading.Thread(target=run, name="s3-outage", daemon=True)
        thread.start()
        return thread


@pytest.fixture
def flaky_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[FlakyS3]:
    """A fresh restartable S3 server with an empty bucket of its own (``.bucket``), fake
    credentials in the environment, and moto's per-request log quietened."""
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    s3 = FlakyS3()
    boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=s3.bucket)
    try:
        yield s3
    finally:
        s3.start()  # a test that left it down
        s3._server.stop()
        werkzeug.setLevel(level)


@dataclass(frozen=True)
class FlakyMlflow:
    """An ``mlflow server`` process proxying artifacts to a bucket on a :class:`FlakyS3`."""

    url: str
    s3: FlakyS3
    log: Path
    process: subprocess.Popen

    def server_log(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def wait_healthy(self, timeout_s: float = 90.0) -> FlakyMlflow:
        import requests

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited {self.process.returncode}:\n"
                            f"{self.server_log()[-4000:]}")  # fmt: skip
            try:
                if requests.get(f"{self.url}/health", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass  # not listening yet
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {timeout_s}s:\n"
                            f"{self.server_log()[-4000:]}")  # fmt: skip
            time.sleep(0.25)


@pytest.fixture(scope="module")
def flaky_mlflow_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlakyMlflow]:
    """``mlflow server`` on 127.0.0.1 with artifacts on a restartable S3 server, started but
    not yet waited for (it takes seconds: a module can do other work meanwhile).

    The server's own S3 client makes one attempt per request (``AWS_MAX_ATTEMPTS=1``): left at
    botocore's default it retries for several seconds itself, and an outage of a few seconds
    would never reach the client. With one attempt every S3 fault becomes a 5xx answer that the
    project's side of the upload (MLflow's client retries) has to ride out.
    """
    with pytest.MonkeyPatch.context() as env:
        for key, value in S3_ENV.items():
            env.setenv(key, value)
        werkzeug = logging.getLogger("werkzeug")
        level = werkzeug.level
        werkzeug.setLevel(logging.WARNING)
        s3 = FlakyS3()
        boto3.client("s3", endpoint_url=s3.endpoint).create_bucket(Bucket=s3.bucket)
        folder = tmp_path_factory.mktemp("flaky-mlflow")
        _migrate(folder / "srv.db")
        server_env = {
            **os.environ,
            "MLFLOW_S3_ENDPOINT_URL": s3.endpoint,
            "AWS_RETRY_MODE": "standard",
            "AWS_MAX_ATTEMPTS": "1",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        server_env.pop("MLFLOW_TRACKING_URI", None)
        port = _free_port()
        log_path = folder / "server.log"
        command = [
            str(Path(sys.executable).parent / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{folder / 'srv.db'}",
            "--artifacts-destination", f"s3://{s3.bucket}/",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            # Its own process group: the CLI runs uvicorn as a child.
            process = subprocess.Popen(
                command, cwd=folder, env=server_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            yield FlakyMlflow(f"http://127.0.0.1:{port}", s3, log_path, process)
        finally:
            process.terminate()  # the CLI forwards SIGTERM to uvicorn and waits for it
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            s3.start()
            s3._server.stop()
            werkzeug.setLevel(level)


@pytest.fixture(scope="module")
def flaky_mlflow(flaky_mlflow_started: FlakyMlflow) -> FlakyMlflow:
    """:func:`flaky_mlflow_started`, answering ``/health``."""
    return flaky_mlflow_started.wait_healthy()


def _migrate(database: Path) -> None:
    """Create MLflow's tables here rather than in the server, whose start then takes seconds
    less (and a failure shows in the test's own traceback)."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{database}"
    SqlAlchemyStore(uri, str(database.parent / "artifacts"))
    RegistryStore(uri)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
