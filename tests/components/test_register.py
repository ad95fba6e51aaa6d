"""Register step on an embedded sqlite store: challenger alias, lineage and metrics tags,
idempotent re-runs, clear errors. The same registration through a real ``mlflow server`` with
S3 artifacts runs in test_promote's flow, which needs the versions anyway."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient, get_tracking_uri, is_tracking_uri_set
from mlflow.tracking.fluent import active_run, start_run

from components.model_package import load_registered_model
from components.promote import Decision, promote
from components.register import Lineage, flatten_metrics, register_model
from components.registry import RegistryUnreachable, use_tracking_uri
from model_lib.presets import ExperimentConfig
from tests.components.conftest import Backend

METRICS = {
    "split": "test",
    "classification": {"auc_macro": 0.81, "accuracy": 0.7, "class_names": ["Normal", "CHF"]},
    "saliency": {"cc": {"mean": 0.42}},
    "passed": True,
}


def lineage(run: str, **changes: object) -> dict[str, object]:
    return {
        "data_rev": "a1b2c3d",
        "data_md5": "0cc175b9c0f1b6a831c399e269772661",
        "git_sha": "911c390",
        "pipeline_run_id": run,
        "preset": "ci",
        "overrides": ["model.width=0.125"],
        **changes,
    }


def client_for(backend: Backend) -> MlflowClient:
    return MlflowClient(backend.tracking_uri, registry_uri=backend.tracking_uri)


def test_register_tags_lineage_sets_challenger_and_is_idempotent(
    sqlite_backend: Backend, model_name: str, weights_file: Path, ci_config: ExperimentConfig
) -> None:
    backend = sqlite_backend
    client = client_for(backend)
    first = register_model(
        weights_file,
        ci_config,
        METRICS,
        lineage("run-1"),
        tracking_uri=backend.tracking_uri,
        model_name=model_name,
        artifact_location=backend.artifact_location,
    )
    assert (first.version, first.reused) == ("1", False)
    assert first.model_uri == f"models:/{model_name}/1"
    assert str(client.get_model_version_by_alias(model_name, "challenger").version) == "1"

    tags = client.get_model_version(model_name, "1").tags
    assert {k: tags[k] for k in ("data_rev", "data_md5", "git_sha", "pipeline_run_id", "preset")} \
        == {k: v for k, v in lineage("run-1").items() if k != "overrides"}  # fmt: skip
    assert json.loads(tags["overrides"]) == ["model.width=0.125"]
    assert re.fullmatch(r"[0-9a-f]{64}", tags["weights_sha256"])
    assert tags["weights_sha256"] == first.weights_sha256
    assert json.loads(tags["metrics"]) == {
        "classification.auc_macro": 0.81,
        "classification.accuracy": 0.7,
        "saliency.cc.mean": 0.42,
    }
    run = client.get_run(first.run_id)
    assert run.data.tags["pipeline_run_id"] == "run-1"
    assert run.data.metrics["classification.auc_macro"] == pytest.approx(0.81)
    assert run.data.tags["git_sha"] == "911c390"

    # A retried task: same version back, nothing new registered, nothing uploaded.
    again = register_model(
        weights_file,
        ci_config,
        {},
        lineage("run-1"),
        tracking_uri=backend.tracking_uri,
        model_name=model_name,
        artifact_location=backend.artifact_location,
    )
    assert (again.version, again.run_id, again.reused) == ("1", first.run_id, True)
    assert len(client.search_model_versions(f"name='{model_name}'")) == 1

    # The next pipeline run, logged into the run its caller has open: version 2 takes the alias,
    # and the caller's run stays open for the caller to end.
    experiment = client.get_experiment_by_name("cxr-gaze")
    with (
        use_tracking_uri(backend.tracking_uri),
        start_run(experiment_id=experiment.experiment_id) as opened,
    ):
        second = register_model(
            weights_file,
            ci_config,
            METRICS,
            lineage("run-2"),
            tracking_uri=backend.tracking_uri,
            model_name=model_name,
            run_id=opened.info.run_id,
        )
        assert active_run().info.run_id == opened.info.run_id
    assert (second.version, second.run_id) == ("2", opened.info.run_id)
    assert str(client.get_model_version_by_alias(model_name, "challenger").version) == "2"
    assert client.get_model_version(model_name, "2").run_id == opened.info.run_id
    assert client.get_run(opened.info.run_id).data.tags["pipeline_run_id"] == "run-2"


def test_bad_inputs_fail_before_anything_is_written(
    sqlite_backend: Backend, weights_file: Path, ci_config: ExperimentConfig, tmp_path: Path
) -> None:
    kwargs = {"tracking_uri": sqlite_backend.tracking_uri,
              "artifact_location": sqlite_backend.artifact_location}  # fmt: skip
    bad_lineage = lineage("run-1")
    del bad_lineage["git_sha"]
    with pytest.raises(ValueError, match=r"(?s)lineage.*git_sha"):
        register_model(weights_file, ci_config, {}, bad_lineage, **kwargs)
    with pytest.raises(ValueError, match="pipeline_run_id"):
        register_model(weights_file, ci_config, {}, lineage("it's"), **kwargs)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.pt"):
        register_model(tmp_path / "nowhere.pt", ci_config, {}, lineage("run-1"), **kwargs)
    wider = ci_config.model_copy(
        update={"model": ci_config.model.model_copy(update={"width": 0.25})}
    )
    with pytest.raises(ValueError, match=r"weights\.pt: weights do not fit"):
        register_model(weights_file, wider, {}, lineage("run-1"), **kwargs)
    client = client_for(sqlite_backend)
    assert client.search_registered_models() == []
    assert client.get_experiment_by_name("cxr-gaze") is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_clear_line(
    weights_file: Path, ci_config: ExperimentConfig, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(RegistryUnreachable) as caught:
        register_model(weights_file, ci_config, {}, lineage("run-1"), tracking_uri=uri)
    assert time.monotonic() - start < 10  # MLflow's own client would retry for minutes
    message = str(caught.value)
    assert uri in message and "unreachable" in message and "\n" not in message
    with pytest.raises(RegistryUnreachable, match=re.escape(uri)):
        promote(Decision(True, []), "1", tracking_uri=uri)
    with pytest.raises(RegistryUnreachable, match=re.escape(uri)):
        load_registered_model("models:/cxr-gaze@champion", tracking_uri=uri)
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'mlflow.db'}"
    with pytest.raises(RegistryUnreachable, match=re.escape(missing)):
        register_model(weights_file, ci_config, {}, lineage("run-1"), tracking_uri=missing)


@pytest.mark.parametrize("before", [None, "sqlite:///elsewhere.db"])
def test_the_tracking_uri_is_set_inside_the_block_only(
    sqlite_backend: Backend, monkeypatch: pytest.MonkeyPatch, before: str | None
) -> None:
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with use_tracking_uri(sqlite_backend.tracking_uri) as client:
        assert get_tracking_uri() == sqlite_backend.tracking_uri
        assert client.search_registered_models() == []
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert is_tracking_uri_set() == (before is not None)


def test_flatten_metrics_and_lineage_tags() -> None:
    assert flatten_metrics(METRICS) == {
        "classification.auc_macro": 0.81,
        "classification.accuracy": 0.7,
        "saliency.cc.mean": 0.42,
    }
    tags = Lineage.model_validate(lineage("r", overrides=["a=1", "b=[1, 2]"])).tags()
    assert json.loads(tags["overrides"]) == ["a=1", "b=[1, 2]"]
    assert all(isinstance(v, str) for v in tags.values())
    with pytest.raises(ValueError, match="extra"):
        Lineage.model_validate(lineage("r", branch="main"))
