"""The whole training pipeline in kfp.local with the `ci` preset: every step as a subprocess,
MLflow tracking in a sqlite store, registration and the promotion gate. The successful run
passes the store and maps between steps by URI through an S3 server (moto); the failing one
keeps them local. The successful run's DICOMs carry planted identifying fields, ingested with
``data.phi_policy=strip``: no planted value may reach any file, object or log it writes."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components.data_transfer import POINTER_FILE
from components.ingest_suites import PHI_SUITE
from components.registry import MODEL_NAME
from components.tracking import STEP_TAG
from model_lib.presets import get_preset
from pipelines.cli import app
from pipelines.local_run import PipelineFailed, RunSummary, run_local
from pipelines.training_pipeline import default_policy
from tests.components.test_phi_ingest import MARKERS, find_markers, plant_phi

pytestmark = pytest.mark.slow


def lenient_policy() -> dict:
    """The shipped policy with floors a briefly trained `ci` model clears."""
    policy = default_policy()
    policy["floors"] = {"auc_macro": 0.0, "cc_mean": -1.0}
    return policy


BUCKET = "cxr-gaze-pipeline-data"


@pytest.fixture(scope="module")
def ci_inputs(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw release with planted identifying fields, root folder of the run's outputs)."""
    root = tmp_path_factory.mktemp("pipeline")
    raw = tmp_path_factory.mktemp("pipeline-release") / "raw"
    shutil.copytree(tiny_release, raw)
    plant_phi(raw)
    return raw, root


@pytest.fixture(scope="module")
def ci_run(ci_inputs: tuple[Path, Path], s3_endpoint: str) -> Iterator[RunSummary]:
    import boto3

    raw, root = ci_inputs
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    with pytest.MonkeyPatch.context() as env:
        # The steps are subprocesses: they find the S3 server through the environment.
        env.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        env.setenv("CXRGAZE_DATA_CACHE", str(root / "data-cache"))
        # The code version as an image states it; a checkout being edited would be "+dirty".
        env.setenv("CXRGAZE_GIT_SHA", "c0de" * 10)
        yield run_local(raw, **ci_arguments(root))


def ci_arguments(root: Path) -> dict:
    return {
        "preset": "ci",
        "overrides": ["data.phi_policy=strip"],
        "data_rev": "v-test",
        "tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "policy": lenient_policy(),
        "pipeline_root": root / "outputs",
        "data_remote": f"s3://{BUCKET}/ci",
    }


@pytest.fixture(scope="module")
def rerun(ci_run: RunSummary, ci_inputs: tuple[Path, Path]) -> RunSummary:
    """The same pipeline again: same data content, code, preset and overrides."""
    raw, root = ci_inputs
    return run_local(raw, **ci_arguments(root))


@pytest.fixture(scope="module")
def client(ci_run: RunSummary) -> MlflowClient:
    return MlflowClient(ci_run.tracking_uri, registry_uri=ci_run.tracking_uri)


def test_an_identical_rerun_finds_the_version_and_trains_nothing(
    ci_run: RunSummary, rerun: RunSummary, client: MlflowClient
) -> None:
    assert rerun.succeeded and rerun.mlflow_status == "FINISHED"
    assert rerun.trained_as == ("1", ci_run.pipeline_run_id)
    assert rerun.version is None and rerun.test == {}
    assert "already trained: cxr-gaze version 1" in rerun.text()
    assert [str(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")] == ["1"]
    assert not (rerun.output_dir / "pretrain").exists()
    assert rerun.seconds < ci_run.seconds / 3


def test_run_registers_and_promotes_the_first_version(ci_run: RunSummary) -> None:
    assert ci_run.succeeded
    assert ci_run.version == "1"
    assert ci_run.validation_status == "approved"
    assert ci_run.aliases == {"champion": "1", "challenger": "1"}
    assert any(r.startswith("info: no champion") for r in ci_run.reasons)
    assert ci_run.report is not None and ci_run.report.suffix == ".html"
    assert "macro AUC" in ci_run.report.read_text()
    assert set(ci_run.test) == {"auc_macro", "accuracy", "cc_mean", "center_prior_cc_mean"}
    text = ci_run.text()
    assert "champion -> v1" in text and "mlflow ui --backend-store-uri sqlite:///" in text


def test_parent_run_with_a_nested_run_per_step(ci_run: RunSummary, client: MlflowClient) -> None:
    parent = client.get_run(ci_run.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["data_rev"] == "v-test"
    assert parent.data.params["preset"] == "ci"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    steps = {run.data.tags[STEP_TAG]: run for run in children}
    assert set(steps) == {"s1a", "s1b", "s2", "s3", "s3j", "evaluate", "register", "promote"}
    assert all(run.info.status == "FINISHED" for run in children)
    epochs = get_preset("ci").stage("s2").max_epochs
    history = client.get_metric_history(steps["s2"].info.run_id, "s2/train_loss")
    assert [m.step for m in history] == list(range(epochs))
    assert history[-1].value < history[0].value
    assert steps["s2"].data.params["s2.max_epochs"] == str(epochs)
    assert "cxrgaze.skipped" in steps["s3j"].data.tags  # 3' is off in the ci preset
    artifacts = {a.path for a in client.list_artifacts(steps["s2"].info.run_id)}
    assert {"s2_history.json", "s2_loss.png"} <= artifacts
    assert "test/auc_macro" in steps["evaluate"].data.metrics
    assert steps["evaluate"].data.tags["data_rev"] == "v-test"


def test_version_lineage(ci_run: RunSummary, client: MlflowClient) -> None:
    version = client.get_model_version(MODEL_NAME, ci_run.version)
    tags = version.tags
    # The run is known by its job uuid; its display name (kfp.local's folder) is a label.
    assert tags["pipeline_run_id"] == ci_run.pipeline_run_id != ci_run.pipeline_run_name
    assert ci_run.output_dir.name == ci_run.pipeline_run_name
    assert tags["data_rev"] == "v-test"
    assert tags["preset"] == "ci"
    assert tags["git_sha"] and tags["git_sha"] != "unknown"
    pointer = json.loads((ci_run.output_dir / "ingest" / "store" / POINTER_FILE).read_text())
    assert tags["data_md5"] == pointer["md5"]
    assert tags["validation_status"] == "approved"


def test_store_and_maps_passed_by_uri(ci_run: RunSummary, s3_endpoint: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="ci/")["Contents"]}
    for step, output in (("ingest", "store"), ("heatmaps", "maps")):
        artifact = ci_run.output_dir / step / output
        assert [p.name for p in artifact.iterdir()] == [POINTER_FILE]
        pointer = json.loads((artifact / POINTER_FILE).read_text())
        prefix = pointer["uri"].removeprefix(f"s3://{BUCKET}/")
        assert {f"{prefix}/{rel}" for rel in pointer["files"]} <= keys
    assert any(k.endswith("/train/images.npy") for k in keys)
    assert any(k.endswith("/train/maps.npy") for k in keys)


def test_planted_identifying_values_reach_no_output(ci_run: RunSummary, s3_endpoint: str) -> None:
    """Everything the run wrote: pipeline root and step logs, the MLflow database and artifacts
    (``mlruns/`` beside it), the local data cache and every object in the bucket."""
    import boto3

    root = Path(ci_run.tracking_uri.removeprefix("sqlite:///")).parent
    assert ci_run.output_dir.is_relative_to(root) and ci_run.log is not None
    assert ci_run.log.is_relative_to(root) and (root / "mlruns").is_dir()
    assert find_markers(root) == []
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]  # fmt: skip
    assert any(k.endswith("/train/images.npy") for k in keys)
    leaked = []
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().lower()
        leaked += [key for marker in MARKERS if marker in body]
    assert leaked == []
    # The values were there to leak: ingest saw and reported the fields, by name.
    report = (ci_run.output_dir / "ingest" / "report").read_text(encoding="utf-8")
    assert PHI_SUITE in report and "PatientName" in report and "WARNING" in report


def test_failed_step_marks_the_mlflow_run_failed(tiny_release: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_release, raw)
    sheet = raw / "egd-cxr" / "master_sheet.csv"
    pd.read_csv(sheet).drop(columns=["dicom_id"]).to_csv(sheet, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(PipelineFailed, match="ingest") as failed:
        run_local(raw, preset="ci", tracking_uri=uri, pipeline_root=tmp_path / "out")
    assert "FAILED" in str(failed.value)
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("cxr-gaze").experiment_id],
        filter_string=f"tags.{STEP_TAG} = 'pipeline'",
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["cxrgaze.error"]
    assert client.search_registered_models() == []


def test_cli_run_without_data_is_a_user_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "--raw-dir", str(tmp_path / "none"), "--tracking-uri", "sqlite:///x.db"]
    )
    assert result.exit_code == 2
    assert "no raw release there" in result.output
