"""MLflow tracking of pipeline runs on an embedded sqlite store: the parent run, nested step
runs, retries, closing with the pipeline's final state, and the reject branch of the gate."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from components.promote import reject_step
from components.register import register_model
from components.registry import CHAMPION, VALIDATION_STATUS_TAG, version_by_alias
from components.stage_tracking import EpochMetrics
from components.tracking import (
    STEP_TAG,
    close_run_step,
    default_artifact_location,
    find_pipeline_run,
    git_sha,
    open_pipeline_run,
    open_run_step,
    step_run,
)
from model_lib.presets import ExperimentConfig
from tests.components.conftest import Backend


def open_run(uri: str, pipeline_run_id: str = "pipe-1") -> str:
    return open_pipeline_run(
        uri,
        pipeline_run_id=pipeline_run_id,
        params={"preset": "ci"},
        tags={"data_rev": "r1", "data_version": "abc"},
        config={"seed": 0},
    )


def test_parent_run_is_opened_once_per_pipeline_run(sqlite_backend: Backend) -> None:
    uri = sqlite_backend.tracking_uri
    run_id = open_run(uri)
    assert open_run(uri) == run_id  # a retried first step finds it
    assert open_run(uri, "pipe-2") != run_id
    assert find_pipeline_run(uri, "pipe-1") == run_id
    assert find_pipeline_run(uri, "never") is None
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"preset": "ci"}
    assert run.data.tags["data_rev"] == "r1" and run.data.tags[STEP_TAG] == "pipeline"
    config = Path(client.download_artifacts(run_id, "config.json", str(sqlite_backend_dir(uri))))
    assert json.loads(config.read_text()) == {"seed": 0}


def sqlite_backend_dir(uri: str) -> Path:
    folder = Path(uri.removeprefix("sqlite:///")).parent / "downloads"
    folder.mkdir(exist_ok=True)
    return folder


def test_sqlite_artifacts_live_beside_the_database(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    assert default_artifact_location(uri) == (tmp_path / "db" / "mlruns").as_uri()
    assert default_artifact_location("http://127.0.0.1:5000") is None


def test_step_runs_nest_under_the_parent_and_are_reused_on_retry(sqlite_backend: Backend) -> None:
    uri = sqlite_backend.tracking_uri
    parent = open_run(uri)
    with step_run(uri, parent, "s1b", {"s1b.lr": 0.001}) as run:
        callback = EpochMetrics()
        for epoch, loss in enumerate([1.0, 0.8, 0.7]):
            callback.on_epoch_end("s1b", epoch, {"train_loss": loss})
    first = run.info.run_id
    with step_run(uri, parent, "s1b", {"s1b.lr": 0.001}) as again:
        assert again.info.run_id == first
    client = MlflowClient(uri)
    child = client.get_run(first)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["data_rev"] == "r1"  # lineage copied from the parent
    assert child.data.params == {"s1b.lr": "0.001"}
    history = client.get_metric_history(first, "s1b/train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.8), (2, 0.7)]
    assert child.info.status == "FINISHED"
    assert mlflow.active_run() is None


def test_a_step_that_raises_ends_its_run_failed(sqlite_backend: Backend) -> None:
    uri = sqlite_backend.tracking_uri
    parent = open_run(uri)
    with pytest.raises(RuntimeError, match="boom"), step_run(uri, parent, "s2") as run:
        raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(run.info.run_id).info.status == "FAILED"


def test_closing_marks_the_run_from_the_pipeline_state(sqlite_backend: Backend) -> None:
    uri = sqlite_backend.tracking_uri
    ok, bad = open_run(uri, "ok"), open_run(uri, "bad")
    client = MlflowClient(uri)
    # A step killed mid-run leaves its nested run RUNNING.
    orphan = client.create_run(
        client.get_run(bad).info.experiment_id, tags={"mlflow.parentRunId": bad}
    )
    assert close_run_step(uri, "ok", "SUCCEEDED") == "FINISHED"
    assert close_run_step(uri, "bad", "FAILED", "Task ingest failed.") == "FAILED"
    assert close_run_step(uri, "never-opened", "FAILED") is None
    assert client.get_run(ok).info.status == "FINISHED"
    assert client.get_run(bad).info.status == "FAILED"
    assert client.get_run(bad).data.tags["cxrgaze.error"] == "Task ingest failed."
    assert client.get_run(orphan.info.run_id).info.status == "FAILED"


def test_git_sha_prefers_the_image_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRGAZE_GIT_SHA", "0123abc")
    assert git_sha() == "0123abc"
    monkeypatch.delenv("CXRGAZE_GIT_SHA")
    assert git_sha(Path("/")) == "unknown"  # not a checkout
    assert len(git_sha().removesuffix("+dirty")) == 40


def test_reject_branch_tags_the_version_and_keeps_the_champion(
    sqlite_backend: Backend, weights_file: Path, ci_config: ExperimentConfig
) -> None:
    uri = sqlite_backend.tracking_uri
    parent = open_run(uri)
    lineage = {"data_rev": "r1", "data_md5": "m", "git_sha": "g", "pipeline_run_id": "pipe-1",
               "preset": "ci"}  # fmt: skip
    version = register_model(weights_file, ci_config, {}, lineage, tracking_uri=uri).version
    reasons = "pass: challenger scores are finite\nfail: macro AUC 0.4000 >= floor 0.7000"
    result = reject_step(version, reasons, tracking_uri=uri, parent_run_id=parent)
    assert not result.approved and result.moves == ()
    client = MlflowClient(uri, registry_uri=uri)
    tags = client.get_model_version("cxr-gaze", version).tags
    assert tags[VALIDATION_STATUS_TAG] == "rejected"
    assert "fail: macro AUC" in tags["validation_reasons"]
    assert version_by_alias(client, "cxr-gaze", CHAMPION) is None
    (promote_run,) = client.search_runs(
        [client.get_run(parent).info.experiment_id], filter_string=f"tags.{STEP_TAG} = 'promote'"
    )
    assert promote_run.data.tags[VALIDATION_STATUS_TAG] == "rejected"


@pytest.mark.slow
def test_pipeline_tracking_through_a_real_server(mlflow_server, request) -> None:
    """The same calls against ``mlflow server`` with artifacts on S3 (moto): a step's files go
    through the server into the bucket."""
    import boto3

    uri = mlflow_server.url
    pipeline = f"pipe-{request.node.name}"
    parent = open_run(uri, pipeline)
    with step_run(uri, parent, "evaluate") as run:
        mlflow.log_text("<html>report</html>", "evaluation/report.html")
        mlflow.log_metric("test/auc_macro", 0.9)
    assert close_run_step(uri, pipeline, "SUCCEEDED") == "FINISHED"
    client = MlflowClient(uri)
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(run.info.run_id).data.metrics == {"test/auc_macro": 0.9}
    s3 = boto3.client("s3", endpoint_url=mlflow_server.s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mlflow_server.bucket)["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/evaluation/report.html") for k in keys)
    assert any(k.endswith(f"{parent}/artifacts/config.json") for k in keys)


def test_a_model_already_trained_on_the_same_inputs_is_found(
    sqlite_backend: Backend,
    weights_file: Path,
    ci_config: ExperimentConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri = sqlite_backend.tracking_uri
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.csv").write_text("x\n1\n")
    monkeypatch.setenv("CXRGAZE_GIT_SHA", "c0de")

    def opened(pipeline: str, overrides=(), retrain: bool = False, preset: str = "ci") -> str:
        return open_run_step(str(raw), "r1", preset, list(overrides), uri, pipeline,
                             retrain=retrain)[2]  # fmt: skip

    assert opened("pipe-1") == ""  # nothing registered yet
    lineage = {"data_rev": "r1", "data_md5": "m", "git_sha": "c0de", "pipeline_run_id": "pipe-1",
               "preset": "ci"}  # fmt: skip
    register_model(weights_file, ci_config, {}, lineage, tracking_uri=uri)
    assert opened("pipe-2") == ""  # pipe-1 has not finished yet
    close_run_step(uri, "pipe-1", "SUCCEEDED")
    assert opened("pipe-3") == "1"
    client = MlflowClient(uri)
    assert client.get_run(find_pipeline_run(uri, "pipe-3")).data.tags["trained_as"] == "1 pipe-1"
    # Anything that could change the model means training again.
    assert opened("pipe-4", retrain=True) == ""
    assert opened("pipe-5", overrides=["stages.s2.max_epochs=1"]) == ""
    assert opened("pipe-6", preset="demo") == ""
    monkeypatch.setenv("CXRGAZE_GIT_SHA", "c0de+dirty")
    assert opened("pipe-7") == ""
    monkeypatch.setenv("CXRGAZE_GIT_SHA", "c0de")
    (raw / "a.csv").write_text("x\n2\n")
    assert opened("pipe-8") == ""


def test_only_code_changes_make_the_code_version_dirty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    monkeypatch.delenv("CXRGAZE_GIT_SHA", raising=False)
    (tmp_path / "model_lib").mkdir()
    (tmp_path / "model_lib" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q"], ["add", "-A"], [*ident, "commit", "-qm", "code"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    clean = git_sha(tmp_path)
    assert len(clean) == 40
    (tmp_path / "README.md").write_text("docs, edited\n")
    assert git_sha(tmp_path) == clean
    (tmp_path / "model_lib" / "a.py").write_text("x = 2\n")
    assert git_sha(tmp_path) == f"{clean}+dirty"
