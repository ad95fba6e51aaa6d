"""The registry going away under a step: a real ``mlflow server`` stopped before registration and
started again on the same port and store.

(A server that never answered at all is in test_register's unreachable-server test.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from components.register import register_step
from components.registry import CHALLENGER, MODEL_NAME, RegistryUnreachable
from components.tracking import STEP_TAG, open_pipeline_run
from tests.components.conftest import ServerProcess

pytestmark = pytest.mark.integration

RUN = "pipeline-run-7"


def test_registration_with_the_server_down_fails_clearly_and_a_rerun_registers_once(
    restartable_mlflow_server: ServerProcess, weights_file: Path, tmp_path: Path
) -> None:
    server = restartable_mlflow_server
    server.start()
    # What the pipeline did before registration, while the server was up: the parent run.
    parent = open_pipeline_run(server.url, pipeline_run_id=RUN, params={}, tags={}, config={})
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"classification": {"auc_macro": 0.8}}))

    def register():
        return register_step(weights_file, summary, "ci", [], data_rev="r1", data_md5="d41d8",
                             pipeline_run_id=RUN, tracking_uri=server.url,
                             parent_run_id=parent)  # fmt: skip

    server.stop()
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable) as caught:
        register()
    assert time.monotonic() - started < 15  # not MLflow's minutes of retries
    message = str(caught.value)
    assert server.url in message and "unreachable" in message and "\n" not in message

    server.start()  # same port, same store
    client = MlflowClient(server.url, registry_uri=server.url)
    # Nothing half-done: no model, no version, no register run under the parent.
    assert client.search_registered_models() == []
    experiment_id = client.get_run(parent).info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.data.tags.get(STEP_TAG) for r in children] == []

    first, again = register(), register()
    assert (first.reused, again.reused) == (False, True)
    assert again.version == first.version and again.run_id == first.run_id
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [(str(v.version), v.tags["pipeline_run_id"]) for v in versions] == [(first.version, RUN)]
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == first.version
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.data.tags.get(STEP_TAG) for r in children] == ["register"]
