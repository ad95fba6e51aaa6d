"""`cxrgaze serve` as a real process on 127.0.0.1 (port 0), and MLflow's own scoring server
(`mlflow models serve --env-manager local`) on the same registered version.

Both servers start at once, in the background, when the module's first test needs them; each is
stopped (SIGTERM, then SIGKILL of its process group) at the end. Their logs are shown when they
do not come up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.pyfunc import PyFuncModel
from PIL import Image
from typer.testing import CliRunner

from components.model_package import load_registered_model
from components.predict import run_predict
from components.registry import CHAMPION, MODEL_NAME
from model_lib.data.preprocess import preprocess_image
from model_lib.data.schema import CLASS_NAMES
from model_lib.presets import ExperimentConfig
from pipelines.cli import app
from tests.components.test_predict import make_inputs, register_champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START_TIMEOUT_S = 120.0
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
BIN = Path(sys.executable).parent


@dataclass
class Process:
    popen: subprocess.Popen
    log: Path

    def tail(self, n: int = 4000) -> str:
        return self.log.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then SIGKILL to the whole group (MLflow's CLI runs uvicorn as a child)."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        return self.popen.returncode


def launch(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> Process:
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Process(popen, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Servers:
    cxrgaze: Process
    mlflow: Process
    mlflow_url: str


@pytest.fixture(scope="module")
def tracking_uri(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_db: Path,
    weights_file: Path,
    ci_config: ExperimentConfig,
) -> str:
    return register_champion(
        tmp_path_factory.mktemp("registry"), migrated_db, weights_file, ci_config
    )


@pytest.fixture(scope="module")
def servers(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    folder = tmp_path_factory.mktemp("servers")
    env = {
        **os.environ,
        # `mlflow models serve --env-manager local` runs `uvicorn` from PATH.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    cxrgaze = launch(
        [str(BIN / "cxrgaze"), "serve", "--model", CHAMPION_URI, "--tracking-uri", tracking_uri,
         "--host", "127.0.0.1", "--port", "0", "--max-body-mb", "1"],
        folder / "cxrgaze.log", env, folder,
    )  # fmt: skip
    # MLflow's CLI turns port 0 into its default 8000, so the port is chosen here.
    port = free_port()
    mlflow_env = {**env, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri}
    mlflow = launch(
        [str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        folder / "mlflow.log", mlflow_env, folder,
    )  # fmt: skip
    try:
        yield Servers(cxrgaze, mlflow, f"http://127.0.0.1:{port}")
    finally:
        cxrgaze.stop()
        mlflow.stop()


def wait_until(process: Process, ready, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        if process.popen.poll() is not None:
            pytest.fail(f"{what} exited {process.popen.returncode}:\n{process.tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {START_TIMEOUT_S}s:\n{process.tail()}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def url(servers: Servers) -> str:
    """The URL `cxrgaze serve` printed, once /health answers."""
    found: list[str] = []

    def ready() -> bool:
        match = re.search(r"serving \S+ at (http://127\.0\.0\.1:\d+)", servers.cxrgaze.tail())
        if match:
            found.append(match.group(1))
            return requests.get(f"{match.group(1)}/health", timeout=5).ok
        return False

    wait_until(servers.cxrgaze, ready, "cxrgaze serve")
    return found[-1]


@pytest.fixture(scope="module")
def inputs(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tiny_release, tmp_path_factory.mktemp("serve-inputs"))


@pytest.fixture(scope="module")
def predicted(inputs: Path, tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cxrgaze predict`'s outputs for the same inputs."""
    out = tmp_path_factory.mktemp("predicted")
    summary = run_predict(
        [inputs / "a" / "scan.dcm", inputs / "chest.png"], out, tracking_uri=tracking_uri
    )
    assert not summary.failed
    return out


@pytest.fixture(scope="module")
def pyfunc(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> PyFuncModel:
    model, _ = load_registered_model(
        CHAMPION_URI, tracking_uri=tracking_uri, dst_path=tmp_path_factory.mktemp("pyfunc")
    )
    return model


def saliency(answer: dict) -> np.ndarray:
    field = answer["saliency"]
    assert field["dtype"] == "float32" and field["byte_order"] == "little"
    return np.frombuffer(base64.b64decode(field["base64"]), "<f4").reshape(field["shape"])


def test_health_names_the_model(url: str) -> None:
    answer = requests.get(f"{url}/health", timeout=10).json()
    assert answer["status"] == "ok"
    assert answer["model"]["name"] == MODEL_NAME and answer["model"]["version"] == "1"
    assert answer["model"]["alias"] == CHAMPION


def test_a_raw_dicom_body_answers_like_predict(
    url: str,
    inputs: Path,
    predicted: Path,
    pyfunc: PyFuncModel,
    ci_config: ExperimentConfig,
) -> None:
    source = inputs / "a" / "scan.dcm"
    response = requests.post(
        f"{url}/predict",
        data=source.read_bytes(),
        headers={"Content-Type": "application/dicom"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = json.loads((predicted / "scan.json").read_text())
    assert list(answer["probabilities"]) == list(CLASS_NAMES)
    for key in ("predicted_class", "model", "input"):
        assert answer[key] == expected[key]
    np.testing.assert_allclose(
        list(answer["probabilities"].values()),
        list(expected["probabilities"].values()),
        atol=1e-6,
        rtol=0,
    )
    maps = saliency(answer)
    assert maps.shape == ci_config.model.input_hw
    assert maps.sum() == pytest.approx(1.0, abs=1e-4)
    image, _, _ = preprocess_image(source, ci_config.data.scaled_geometry())
    np.testing.assert_allclose(maps, pyfunc.predict(image[None, None])["saliency"][0], atol=1e-6)
    assert "overlay_png_base64" not in answer


def test_a_multipart_png_with_an_overlay(url: str, inputs: Path, predicted: Path) -> None:
    png = (inputs / "chest.png").read_bytes()
    response = requests.post(
        f"{url}/predict",
        params={"overlay": "true"},
        files={"file": ("chest.png", png, "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    expected = json.loads((predicted / "chest.json").read_text())
    assert answer["source"] == "chest.png"
    np.testing.assert_allclose(
        list(answer["probabilities"].values()),
        list(expected["probabilities"].values()),
        atol=1e-6,
        rtol=0,
    )
    with Image.open(io.BytesIO(base64.b64decode(answer["overlay_png_base64"]))) as overlay:
        assert overlay.format == "PNG"
        with Image.open(predicted / "chest_overlay.png") as written:
            assert overlay.size == written.size


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"hello", "text/plain", 415, "Content-Type 'text/plain' is not supported"),
        (b"\x00" * 300, "image/png", 415, "not a DICOM (no 'DICM' at byte 128), PNG or JPEG"),
        (b"", "application/dicom", 400, "upload: empty file"),
        ("cut-png", "image/png", 400, "upload: cannot decode image"),
        (b"\0" * 128 + b"DICM" + b"\xff" * 64, "application/dicom", 400, "field 'PixelData'"),
        (b"\xff\xd8\xff" + b"\0" * (1 << 20), "image/jpeg", 413, "exceeds the 1,048,576 byte"),
        (b"--b\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b", 400, "no field 'file'"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(
    url: str, inputs: Path, body: bytes | str, content_type: str, status: int, message: str
) -> None:
    if body == "cut-png":
        body = (inputs / "chest.png").read_bytes()[:300]
    response = requests.post(
        f"{url}/predict", data=body, headers={"Content-Type": content_type}, timeout=60
    )
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_mlflow_models_serve_answers_the_tensor_signature(
    servers: Servers, inputs: Path, pyfunc: PyFuncModel, ci_config: ExperimentConfig
) -> None:
    """MLflow's scoring server takes preprocessed tensors (no sha256 check, no image decoding:
    the client preprocesses with the package's geometry)."""

    def ready() -> bool:
        try:
            return requests.get(f"{servers.mlflow_url}/ping", timeout=5).ok
        except requests.ConnectionError:
            return False

    wait_until(servers.mlflow, ready, "mlflow models serve")
    image, _, _ = preprocess_image(inputs / "chest.png", ci_config.data.scaled_geometry())
    x = image[None, None]
    response = requests.post(
        f"{servers.mlflow_url}/invocations", json={"inputs": x.tolist()}, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()["predictions"]
    expected = pyfunc.predict(x)
    np.testing.assert_allclose(answer["probabilities"], expected["probabilities"], atol=1e-6)
    np.testing.assert_allclose(answer["saliency"], expected["saliency"], atol=1e-6)
    outside = requests.post(
        f"{servers.mlflow_url}/invocations", json={"inputs": (x * 3).tolist()}, timeout=60
    )
    assert outside.status_code == 400


def test_cli_serve_refuses_a_missing_alias_and_a_busy_port(tracking_uri: str) -> None:
    runner = CliRunner()
    args = ["serve", "--tracking-uri", tracking_uri, "--port", "0"]
    missing = runner.invoke(app, [*args, "--model", f"models:/{MODEL_NAME}@staging"])
    assert missing.exit_code == 2 and f"models:/{MODEL_NAME}@staging at" in missing.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        taken = runner.invoke(app, ["serve", "--tracking-uri", tracking_uri, "--port", port])
    assert taken.exit_code == 2 and "in use" in taken.stderr


def test_sigterm_stops_the_server(url: str, servers: Servers) -> None:
    """Last in the module: it stops the shared server."""
    assert servers.cxrgaze.stop() == 0  # a graceful stop, the model's download removed
    log = servers.cxrgaze.tail()
    assert "stopped by SIGTERM" in log and "Traceback" not in log
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=5)
