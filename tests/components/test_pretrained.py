"""The run's pretrained weights at the component layer: s3:// sources fetched into torch.hub's
cache (moto), the training step failing before any data moves when the weights cannot be had,
and the weights' name and sha256 in the MLflow lineage (pipeline run -> registered version)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import boto3
import pytest
from mlflow.tracking import MlflowClient

from components.model_ops import lineage_text, version_lineage
from components.pretrained import (
    PRETRAINED_SHA256_TAG,
    PRETRAINED_TAG,
    ensure_pretrained,
    fetch_s3_weights,
    pretrained_lineage,
)
from components.register import register_step
from components.tracking import find_pipeline_run, open_run_step
from components.train_stage import train_stage_step
from model_lib.models import WeightsHashMismatch, WeightsUnavailable
from model_lib.models.pretrained import MIRROR_ENV, RANDOM_INIT, hub_checkpoints_dir
from model_lib.presets import get_preset
from tests.components.conftest import Backend
from tests.model_lib.models.served_weights import (
    densenet121_state,
    save_like_torchvision,
)

pytestmark = pytest.mark.usefixtures("torch_home")  # an empty torch.hub cache

BUCKET = "weights"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_like_torchvision(densenet121_state(), tmp_path_factory.mktemp("published"))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


def _dead_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{port}")


def test_s3_weights_are_fetched_into_the_cache_and_checked(s3, published: Path) -> None:
    s3.upload_file(str(published), BUCKET, f"models/{published.name}")
    uri = f"s3://{BUCKET}/models/{published.name}"
    model = get_preset("ci", ["model.pretrained_weights=" + uri]).model
    local_model, overrides, weights = ensure_pretrained(model, ["seed=1"])
    cached = hub_checkpoints_dir() / published.name
    assert local_model.pretrained_weights == str(cached)
    assert overrides == ["seed=1", f"model.pretrained_weights={cached}"]
    assert weights is not None and weights.verified and weights.label == uri
    assert pretrained_lineage(local_model, weights) == {
        PRETRAINED_TAG: uri,
        PRETRAINED_SHA256_TAG: weights.sha256,
    }
    s3.delete_object(Bucket=BUCKET, Key=f"models/{published.name}")
    assert fetch_s3_weights(uri) == cached  # the cache answers, the bucket is not asked


def test_a_tampered_or_missing_s3_object_is_refused(s3, published: Path) -> None:
    s3.put_object(Bucket=BUCKET, Key=published.name, Body=published.read_bytes() + b"\0")
    uri = f"s3://{BUCKET}/{published.name}"
    with pytest.raises(WeightsHashMismatch, match=uri):
        fetch_s3_weights(uri)
    assert not (hub_checkpoints_dir() / published.name).exists()
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match=f"s3://{BUCKET}/nope.pth") as err:
        fetch_s3_weights(f"s3://{BUCKET}/nope.pth")
    assert time.perf_counter() - start < 10 and "\n" not in str(err.value)


def test_random_initialisation_is_recorded_as_such() -> None:
    model = get_preset("ci").model
    assert ensure_pretrained(model)[2] is None
    assert pretrained_lineage(model, None) == {PRETRAINED_TAG: RANDOM_INIT}
    mt_unet = get_preset("ci", ["model.arch=mt_unet"]).model
    assert pretrained_lineage(mt_unet, None) == {}


def test_the_training_step_fails_before_training_without_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _dead_mirror(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable, match="IMAGENET1K_V1 unavailable") as err:
        train_stage_step(
            "s1a", "ci", ["model.pretrained_weights=imagenet"], tmp_path / "store",
            tmp_path / "maps", tmp_path / "out.pt", init_weights=None,
            tracking_uri="sqlite:///never-opened.db", parent_run_id="p",
        )  # fmt: skip
    assert time.perf_counter() - start < 10 and "\n" not in str(err.value)
    assert not (tmp_path / "out.pt").exists()


def test_the_weights_reach_the_registered_versions_lineage(
    sqlite_backend: Backend, weights_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = sqlite_backend.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("x\n1\n")
    parent, data_md5, _ = open_run_step(str(raw), "r1", "ci", [], uri, "pipe-w")
    client = MlflowClient(uri)
    assert client.get_run(parent).data.tags[PRETRAINED_TAG] == RANDOM_INIT
    # What the first training step writes once it has loaded the weights.
    sha = "ab" * 32
    client.set_tag(parent, PRETRAINED_TAG, "DenseNet121_Weights.IMAGENET1K_V1")
    client.set_tag(parent, PRETRAINED_SHA256_TAG, sha)
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"classification": {"auc_macro": 0.9}}))
    result = register_step(
        weights_file, summary, "ci", [], data_rev="r1", data_md5=data_md5,
        pipeline_run_id="pipe-w", tracking_uri=uri, parent_run_id=parent,
    )  # fmt: skip
    info = version_lineage(uri, result.version)
    assert info["lineage"][PRETRAINED_TAG] == "DenseNet121_Weights.IMAGENET1K_V1"
    assert info["lineage"][PRETRAINED_SHA256_TAG] == sha
    assert f"pretrained_sha256: {sha}" in lineage_text(info)
    assert find_pipeline_run(uri, "pipe-w") == parent


def test_a_paper_run_opens_with_imagenet_as_its_configured_weights(
    sqlite_backend: Backend, tmp_path: Path
) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("x\n1\n")
    uri = sqlite_backend.tracking_uri
    parent = open_run_step(str(raw), "r1", "paper", [], uri, "pipe-p")[0]
    assert MlflowClient(uri).get_run(parent).data.tags[PRETRAINED_TAG] == "imagenet"
    assert not hub_checkpoints_dir().exists()  # tagged without fetching anything
