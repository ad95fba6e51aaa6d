"""The S3 server stopped and started again (same port) while data moves: a DVC push, a DVC pull
into an empty cache, an MLflow model upload. Each rides out a few seconds of outage, and what
lands is checked byte for byte; an outage longer than the retries fails with an error naming
the remote, in seconds rather than a hang."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import torch
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from components.data_transfer import backoff_delays, s3_retries
from components.register import register_model
from components.registry import WEIGHTS_SHA256_TAG, registry_client
from components.tracking import ArtifactUploadError
from model_lib.models import build_model
from model_lib.presets import get_preset
from pipelines.data_sync import DataSyncError, pull, push, verify_remote
from tests.faults.conftest import FlakyMlflow, FlakyS3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REMOTE, PREFIX = "store", "dvc"
N_FILES, FILE_SIZE = 48, 48 * 1024
DOWN_S = 2.5
FAST = {"attempts": 4, "first_delay": 0.5, "max_delay": 2.0}


@pytest.fixture(autouse=True, scope="module")
def _mlflow_server_starts_meanwhile(flaky_mlflow_started: FlakyMlflow) -> None:
    """The MLflow tests' server takes seconds to start: let it while the DVC tests run."""


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def make_repo(root: Path, s3: FlakyS3) -> dict[str, bytes]:
    """A git + DVC repository with a tracked folder of ``N_FILES`` files and a tracked single
    file, its default remote ``store`` on the flaky server; returns the tracked files' bytes."""
    from dvc.repo import Repo

    (root / "data" / "images").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    files = {f"data/images/{i:03d}.bin": os.urandom(FILE_SIZE) for i in range(N_FILES)}
    files["data/labels.csv"] = b"dicom_id,label\n" + b"".join(
        f"img{i},{i % 3}\n".encode() for i in range(N_FILES)
    )
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    with Repo.init(str(root)) as repo:
        with repo.config.edit() as conf:
            conf["core"]["analytics"] = False
            conf["core"]["remote"] = REMOTE
            conf["remote"][REMOTE] = {"url": f"s3://{s3.bucket}/{PREFIX}"}
        with repo.config.edit("local") as conf:
            conf["remote"][REMOTE] = {"endpointurl": s3.endpoint}
        repo.add([str(root / "data" / "images"), str(root / "data" / "labels.csv")])
    return files


def bucket_objects(s3: FlakyS3) -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    keys = [
        obj["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        for obj in page.get("Contents", [])
    ]
    return {k: client.get_object(Bucket=s3.bucket, Key=k)["Body"].read() for k in keys}


def object_count(s3: FlakyS3) -> int:
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    return client.list_objects_v2(Bucket=s3.bucket).get("KeyCount", 0)


def content_addresses(repo: Path, files: dict[str, bytes]) -> set[str]:
    """What DVC 3 should have stored: every file's md5 and the folder's ``.dir`` manifest."""
    dir_md5 = next(
        line.split()[-1] for line in (repo / "data" / "images.dvc").read_text().splitlines()
        if "md5:" in line
    )  # fmt: skip
    return {md5(data) for data in files.values()} | {dir_md5.removesuffix(".dir")}


def assert_remote_holds(s3: FlakyS3, expected: set[str]) -> None:
    """Every object on the remote, read back here, hashes to its key; they are all there."""
    stored = bucket_objects(s3)
    keys = {k.removeprefix(f"{PREFIX}/files/md5/").replace("/", ""): v for k, v in stored.items()}
    assert {k.removesuffix(".dir") for k in keys} == expected
    assert all(md5(data) == key.removesuffix(".dir") for key, data in keys.items())


def test_s3_retry_settings_hold_inside_the_block_and_yield_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")  # an operator's choice
    with s3_retries(9):
        assert os.environ["AWS_RETRY_MODE"] == "standard"
        assert os.environ["AWS_MAX_ATTEMPTS"] == "3"
    assert "AWS_RETRY_MODE" not in os.environ and os.environ["AWS_MAX_ATTEMPTS"] == "3"
    assert backoff_delays(5, 0.5, 3.0) == [0.5, 1.0, 2.0, 3.0]


def test_moto_keeps_its_buckets_across_a_restart_on_the_same_port(flaky_s3: FlakyS3) -> None:
    client = boto3.client("s3", endpoint_url=flaky_s3.endpoint)
    client.put_object(Bucket=flaky_s3.bucket, Key="k", Body=b"kept")
    flaky_s3.stop()
    once = Config(retries={"max_attempts": 1})
    with pytest.raises(EndpointConnectionError):
        boto3.client("s3", endpoint_url=flaky_s3.endpoint, config=once).list_buckets()
    flaky_s3.start()
    assert client.get_object(Bucket=flaky_s3.bucket, Key="k")["Body"].read() == b"kept"


def test_push_and_pull_ride_out_an_s3_restart(flaky_s3: FlakyS3, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    files = make_repo(repo, flaky_s3)
    expected = content_addresses(repo, files)
    at_stop: list[int] = []

    def landed() -> bool:
        n = object_count(flaky_s3)
        at_stop[:] = [n]
        return n > 0

    outage = flaky_s3.outage_when(landed, DOWN_S)
    result = push(repo, jobs=2, **FAST)
    pushed_at = time.monotonic()
    outage.join(timeout=30)
    (stop, stopped_at), (start, started_at) = flaky_s3.events
    assert (stop, start) == ("stop", "start")
    assert 0 < at_stop[0] < len(expected), "the outage must cut into the push"
    assert stopped_at < started_at < pushed_at
    assert (result.remote, result.url) == (REMOTE, f"s3://{flaky_s3.bucket}/{PREFIX}")
    assert result.attempts == 1  # botocore's per-request retries were enough
    assert result.verified == len(expected)
    assert_remote_holds(flaky_s3, expected)

    # A pull into an empty cache and workspace, with the server going down again meanwhile.
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "images")
    (repo / "data" / "labels.csv").unlink()
    cache = repo / ".dvc" / "cache"

    def fetched() -> bool:  # the folder's manifest and at least one file are in
        n = sum(1 for p in cache.rglob("*") if p.is_file())
        at_stop[:] = [n]
        return n >= 2

    outage = flaky_s3.outage_when(fetched, DOWN_S)
    pulled = pull(repo, jobs=2, **FAST)
    outage.join(timeout=30)
    assert [e for e, _ in flaky_s3.events] == ["stop", "start", "stop", "start"]
    assert at_stop[0] < len(expected), "the outage must cut into the pull"
    assert pulled.verified == len(expected)
    assert {rel: (repo / rel).read_bytes() for rel in files} == files


def test_a_push_cut_off_goes_on_at_the_next_attempt(flaky_s3: FlakyS3, tmp_path: Path) -> None:
    """One try per S3 request: the outage fails the push, and a later whole push uploads what
    is missing (DVC skips what the remote holds)."""
    repo = tmp_path / "repo"
    files = make_repo(repo, flaky_s3)
    expected = content_addresses(repo, files)
    outage = flaky_s3.outage_when(lambda: object_count(flaky_s3) > 0, DOWN_S)
    result = push(repo, jobs=2, s3_attempts=1, attempts=5, first_delay=1.0, max_delay=2.0)
    outage.join(timeout=30)
    assert [e for e, _ in flaky_s3.events] == ["stop", "start"]
    assert result.attempts >= 2
    assert 0 < result.transferred < len(expected)  # the last attempt only sent what was missing
    assert result.verified == len(expected)
    assert_remote_holds(flaky_s3, expected)


@pytest.mark.parametrize("mode", ["etag", "content"])
def test_an_object_that_differs_from_its_key_is_named(
    flaky_s3: FlakyS3, tmp_path: Path, mode: str
) -> None:
    repo = tmp_path / "repo"
    files = make_repo(repo, flaky_s3)
    push(repo, **FAST)
    client = boto3.client("s3", endpoint_url=flaky_s3.endpoint)
    damaged = md5(files["data/images/007.bin"])
    damaged_key = f"{PREFIX}/files/md5/{damaged[:2]}/{damaged[2:]}"
    client.put_object(Bucket=flaky_s3.bucket, Key=damaged_key, Body=b"not what the key says")
    lost = md5(files["data/labels.csv"])
    client.delete_object(Bucket=flaky_s3.bucket, Key=f"{PREFIX}/files/md5/{lost[:2]}/{lost[2:]}")
    with pytest.raises(DataSyncError) as caught:
        verify_remote(repo, mode=mode)  # type: ignore[arg-type]
    message = str(caught.value)
    assert f"remote {REMOTE} (s3://{flaky_s3.bucket}/{PREFIX})" in message
    assert f"content differs from its key: {flaky_s3.bucket}/{damaged_key}" in message
    assert f"missing: {flaky_s3.bucket}/{PREFIX}/files/md5/{lost[:2]}/{lost[2:]}" in message
    assert "2 of" in message


def test_a_pull_keeps_a_corrupt_object_out_of_the_workspace(
    flaky_s3: FlakyS3, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    files = make_repo(repo, flaky_s3)
    push(repo, **FAST)
    damaged = md5(files["data/images/011.bin"])
    key = f"{PREFIX}/files/md5/{damaged[:2]}/{damaged[2:]}"
    boto3.client("s3", endpoint_url=flaky_s3.endpoint).put_object(
        Bucket=flaky_s3.bucket, Key=key, Body=b"garbage"
    )
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data" / "images")
    with pytest.raises(DataSyncError, match=f"content differs from its key: .*{damaged[2:]}"):
        pull(repo, **FAST)
    assert not (repo / "data" / "images").exists()  # nothing checked out
    assert not (repo / ".dvc" / "cache" / "files" / "md5" / damaged[:2] / damaged[2:]).exists()


def test_push_gives_up_with_an_error_naming_the_remote(flaky_s3: FlakyS3, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    make_repo(repo, flaky_s3)
    flaky_s3.stop()
    started = time.monotonic()
    with pytest.raises(DataSyncError) as caught:
        push(repo, attempts=2, first_delay=0.2, s3_attempts=2)
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert f"dvc push with remote {REMOTE} (s3://{flaky_s3.bucket}/{PREFIX})" in message
    assert "failed after 2 attempts" in message


# --- MLflow: the registered model's upload, through the server, to S3 --------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("faults-weights") / "weights.pt"
    torch.save(build_model(get_preset("ci").model).state_dict(), path)
    return path


def lineage(run: str) -> dict[str, object]:
    return {"data_rev": "r1", "data_md5": "m1", "git_sha": "g1", "pipeline_run_id": run,
            "preset": "ci"}  # fmt: skip


def test_model_upload_rides_out_an_s3_restart(flaky_mlflow: FlakyMlflow, weights: Path) -> None:
    s3 = flaky_mlflow.s3
    before = object_count(s3)
    outage = s3.outage_when(lambda: object_count(s3) > before, DOWN_S)
    result = register_model(
        weights, get_preset("ci"), {"auc": 0.5}, lineage("faults-restart"),
        tracking_uri=flaky_mlflow.url, model_name="cxr-gaze-faults-restart",
    )  # fmt: skip
    outage.join(timeout=30)
    assert [e for e, _ in s3.events[-2:]] == ["stop", "start"]
    # The outage reached the client: the server answered an upload with a 5xx at least once.
    failed_put = r'"PUT /api/2\.0/mlflow-artifacts/\S+ HTTP/1\.1" 5\d\d'
    assert re.search(failed_put, flaky_mlflow.server_log())
    version = registry_client(flaky_mlflow.url).get_model_version(
        "cxr-gaze-faults-restart", result.version
    )
    assert version.tags[WEIGHTS_SHA256_TAG] == result.weights_sha256
    # The model's objects in the bucket, read here: the weights hash to the tag and hold the
    # tensors given; the library files are byte-identical to the project's.
    stored = {k: v for k, v in bucket_objects(s3).items() if "/models/" in k}
    (weights_key,) = [k for k in stored if k.endswith("/artifacts/weights.pt")]
    assert hashlib.sha256(stored[weights_key]).hexdigest() == result.weights_sha256
    ours = torch.load(io.BytesIO(stored[weights_key]), weights_only=True)
    theirs = torch.load(weights, weights_only=True)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    code = {k.split("/code/", 1)[1]: v for k, v in stored.items() if "/code/" in k}
    assert len(code) > 10
    for rel, data in code.items():
        assert data == (ROOT / rel).read_bytes(), rel


def test_model_upload_fails_clearly_when_s3_stays_down(
    flaky_mlflow: FlakyMlflow, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short retry budget, so that "longer than the retries" is seconds here.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    flaky_mlflow.s3.stop()
    started = time.monotonic()
    try:
        with pytest.raises(ArtifactUploadError) as caught:
            register_model(
                weights, get_preset("ci"), {"auc": 0.5}, lineage("faults-down"),
                tracking_uri=flaky_mlflow.url, model_name="cxr-gaze-faults-down",
            )  # fmt: skip
    finally:
        flaky_mlflow.s3.start()
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert f"MLflow tracking store {flaky_mlflow.url}" in message
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in message
    # Nothing half-registered: no version of the model exists.
    client = registry_client(flaky_mlflow.url)
    assert client.search_model_versions("name='cxr-gaze-faults-down'") == []
