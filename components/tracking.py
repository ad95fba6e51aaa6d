"""MLflow tracking of a pipeline run: one parent run, a nested run per step that trains or
scores, per-epoch metrics, and the run marked failed when a step fails.

Every pipeline step is its own process (a pod on the cluster), so the parent run is opened by
the first step and its id travels through the DAG as a parameter. The exit handler closes it
with the pipeline's final state.

Uploads and an object store that goes away for a while: with the server proxying artifacts (the
deployed setup), each file is one HTTP PUT that MLflow's client retries on 5xx answers and
connection errors with exponential backoff (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, and
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR``, default 2: waits of about 0, 4, 8, ... 120 s), rewinding
the file for each try; a PUT of the same path overwrites, so a retry is safe. A client that
writes to S3 itself (``--no-serve-artifacts``) gets botocore's retries from
:func:`components.data_transfer.s3_retries`. Inside :func:`uploading` an upload that still
fails becomes one :class:`ArtifactUploadError` naming the server, and :func:`check_artifact`
reads an uploaded file back and compares its sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import mlflow
import mlflow.artifacts
import requests
from kfp import dsl
from mlflow.entities import RunStatus
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.data_transfer import s3_retries
from components.kfp_step import step_component
from components.registry import (
    EXPERIMENT_NAME,
    MODEL_NAME,
    PIPELINE_RUN_ID_TAG,
    PIPELINE_RUN_NAME_TAG,
    registered_by,
    registry_client,
    use_tracking_uri,
)

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
GIT_SHA_ENV = "CXRGAZE_GIT_SHA"
TRAINED_AS_TAG = "trained_as"
"""On a pipeline run that found its model already trained: '<version> <pipeline run id>'."""
"""Set in the project image at build time, where there is no git checkout."""
STEP_TAG = "cxrgaze.step"
FAILED_STEPS_TAG = "cxrgaze.failed_steps"


class ArtifactUploadError(RuntimeError):
    """An artifact did not reach the tracking store, or not intact; the message names the store
    and the artifact."""


# What MLflow's client raises once its HTTP retries are spent ("API request to ... failed").
_TRANSFER_ERROR_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE"})


def _transfer_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (MlflowException, requests.RequestException)
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no boto3 here: the server writes to S3, not this process
        return errors
    return (*errors, BotoCoreError, ClientError)


@contextmanager
def uploading(what: str, tracking_uri: str, *, verb: str = "uploading") -> Iterator[None]:
    """Artifact transfers inside the block: S3 clients made here retry (botocore ``standard``
    mode), and a transfer that fails once the retries are spent raises
    :class:`ArtifactUploadError` naming ``what`` and the tracking store."""
    try:
        with s3_retries():
            yield
    except _transfer_errors() as err:
        if isinstance(err, MlflowException) and err.error_code not in _TRANSFER_ERROR_CODES:
            raise  # a refused request (bad input, permissions), not a failed transfer
        raise ArtifactUploadError(
            f"{verb} {what} (MLflow tracking store {tracking_uri}) failed after "
            f"retrying (MLFLOW_HTTP_REQUEST_MAX_RETRIES={MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()}"
            f"): {type(err).__name__}: {err}"
        ) from err


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_artifact(artifact_uri: str, sha256: str, tracking_uri: str) -> None:
    """Download one uploaded file and compare its sha256 with ``sha256``.

    Raises:
        ArtifactUploadError: the download fails or the bytes differ (names the artifact).
    """
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-check-") as tmp:
        with uploading(artifact_uri, tracking_uri, verb="reading back"):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=tmp, tracking_uri=tracking_uri
            )
        if (got := sha256_of(Path(local))) != sha256:
            raise ArtifactUploadError(
                f"{artifact_uri} at {tracking_uri}: sha256 {got}, the uploaded file had {sha256}"
            )


def log_artifact_checked(client: MlflowClient, run_id: str, path: Path, tracking_uri: str) -> None:
    """Upload ``path`` into the run's artifact root, then read it back to check its sha256.

    Raises:
        ArtifactUploadError: the upload failed after the retries, or the stored bytes differ.
    """
    path = Path(path)
    with uploading(f"{path.name} of run {run_id}", tracking_uri):
        client.log_artifact(run_id, str(path))
        artifact_uri = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path.name}"
    check_artifact(artifact_uri, sha256_of(path), tracking_uri)


def refuse_credentials(uri: str, where: str) -> None:
    """A URI with a user name or password in it is refused: as a pipeline parameter it would
    be stored with the run and shown in the KFP UI. Credentials belong in the MLflow Secret
    (``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``)."""
    parsed = urlsplit(uri)
    if parsed.username is not None or parsed.password is not None:
        raise ValueError(
            f"{where}: the URI carries credentials ({parsed.scheme}://<user>:<password>@...), "
            "which a pipeline parameter would store with the run; give the bare URI and put "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the MLflow Secret"
        )


def resolve_tracking_uri(tracking_uri: str = "") -> str:
    """The URI given, else ``MLFLOW_TRACKING_URI``, else the embedded sqlite default."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


CODE_PATHS = ("model_lib", "components", "pipelines", "pyproject.toml", "requirements.lock")
"""What a trained model depends on: uncommitted changes here make the code version "+dirty"
(benchmark results, docs or notebooks being edited do not)."""


def git_sha(repo: Path | None = None) -> str:
    """Commit of the code: ``CXRGAZE_GIT_SHA`` (the image's), else ``git rev-parse HEAD`` of the
    project checkout (with ``+dirty`` for uncommitted changes to :data:`CODE_PATHS`), else
    ``unknown``."""
    if sha := os.environ.get(GIT_SHA_ENV):
        return sha
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store: ``mlruns/`` beside the database file, as an absolute file URI, so
    that every step process puts artifacts in the same place whatever its working folder. None
    for a server, which decides itself."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
    return (database.parent / "mlruns").as_uri()


def _experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def open_pipeline_run(
    tracking_uri: str,
    *,
    pipeline_run_id: str,
    params: Mapping[str, Any],
    tags: Mapping[str, str],
    config: Mapping[str, Any],
    experiment_name: str = EXPERIMENT_NAME,
    pipeline_run_name: str = "",
) -> str:
    """Start (or, for a retried step, find) the parent run of a pipeline run; returns its id.

    ``pipeline_run_id`` identifies the run (the KFP job's uuid); ``pipeline_run_name``, its
    display name, is a label (the MLflow run's name and a tag). ``params`` are logged as run
    parameters, ``tags`` (lineage) as tags, ``config`` (the resolved experiment config) as the
    artifact ``config.json``.
    """
    client = registry_client(tracking_uri)
    experiment_id = _experiment_id(client, experiment_name, tracking_uri)
    if (found := find_pipeline_run(tracking_uri, pipeline_run_id, experiment_name)) is not None:
        return found
    identity = {PIPELINE_RUN_ID_TAG: pipeline_run_id, STEP_TAG: "pipeline"}
    if pipeline_run_name:
        identity[PIPELINE_RUN_NAME_TAG] = pipeline_run_name
    run = client.create_run(
        experiment_id, run_name=pipeline_run_name or pipeline_run_id, tags={**tags, **identity}
    )
    run_id = run.info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        log_artifact_checked(client, run_id, path, tracking_uri)
    logger.info("MLflow run %s opened for pipeline run %s", run_id, pipeline_run_id)
    return run_id


def find_pipeline_run(
    tracking_uri: str, pipeline_run_id: str, experiment_name: str = EXPERIMENT_NAME
) -> str | None:
    """The parent run's id of a pipeline run, or None if it was never opened."""
    client = registry_client(tracking_uri)
    found = _pipeline_runs(
        client, experiment_name, f"tags.{PIPELINE_RUN_ID_TAG} = '{pipeline_run_id}'"
    )
    return found[0].info.run_id if found else None


def find_pipeline_run_named(
    tracking_uri: str, pipeline_run_name: str, experiment_name: str = EXPERIMENT_NAME
) -> tuple[str, str] | None:
    """(MLflow run id, pipeline run id) of the newest pipeline run with that display name."""
    client = registry_client(tracking_uri)
    found = _pipeline_runs(
        client, experiment_name, f"tags.{PIPELINE_RUN_NAME_TAG} = '{pipeline_run_name}'"
    )
    if not found:
        return None
    return found[0].info.run_id, found[0].data.tags[PIPELINE_RUN_ID_TAG]


def _pipeline_runs(client: MlflowClient, experiment_name: str, condition: str) -> list:
    """Parent runs of pipeline runs that meet ``condition`` (an MLflow filter), newest first."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{STEP_TAG} = 'pipeline' and {condition}",
        order_by=["attributes.start_time DESC"],
    )


def close_pipeline_run(
    tracking_uri: str, run_id: str, *, succeeded: bool, failed_steps: Sequence[str] = ()
) -> str:
    """End the parent run: FINISHED, or FAILED with the failed steps as a tag. Returns the
    status written."""
    client = registry_client(tracking_uri)
    status = RunStatus.to_string(RunStatus.FINISHED if succeeded else RunStatus.FAILED)
    if failed_steps:
        client.set_tag(run_id, FAILED_STEPS_TAG, ",".join(failed_steps))
    # Children left running by a killed step would otherwise show as running forever.
    experiment_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
    )
    for child in children:
        if child.info.status == "RUNNING":
            client.set_terminated(child.info.run_id, RunStatus.to_string(RunStatus.FAILED))
    client.set_terminated(run_id, status)
    logger.info("MLflow run %s ended %s", run_id, status)
    return status


@contextmanager
def step_run(
    tracking_uri: str, parent_run_id: str, step: str, params: Mapping[str, Any] = {}
) -> Iterator[mlflow.ActiveRun]:
    """A nested run under the pipeline's parent run, active for the ``with`` block (the fluent
    API logs to it); it ends FAILED if the block raises.

    A retried step finds its earlier nested run by name and logs into it again.
    """
    with use_tracking_uri(tracking_uri) as client:
        parent = client.get_run(parent_run_id)
        found = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and tags.{STEP_TAG} = '{step}'",
            max_results=1,
        )
        # The lineage tags of the pipeline run, so that a step's run can be found by them too.
        lineage = {
            k: v
            for k, v in parent.data.tags.items()
            if not k.startswith("mlflow.") and k != STEP_TAG
        }
        if found:
            context = mlflow.start_run(run_id=found[0].info.run_id)
        else:
            context = mlflow.start_run(
                experiment_id=parent.info.experiment_id,
                run_name=step,
                parent_run_id=parent_run_id,
                tags={**lineage, STEP_TAG: step},
            )
        with context as run:
            logged = run.data.params
            mlflow.log_params({k: v for k, v in params.items() if k not in logged})
            yield run


SKIPPED_TAG = "cxrgaze.skipped"
"""Tag on a stage's run when the preset disables the stage (the weights pass through)."""


@step_component
def open_run(
    raw_dir: str,
    data_rev: str,
    preset: str,
    overrides: list,
    tracking_uri: str,
    pipeline_run_id: str,
    pipeline_run_name: str,
    retrain: bool,
) -> NamedTuple("OpenRunOutputs", [("run_id", str), ("data_version", str), ("trained_as", str)]):
    """Pin the data version (a content digest of the raw release), open the MLflow run, and
    name the registered version already trained on the same data, code and settings ("" when
    there is none, or with ``retrain``)."""
    from components.tracking import open_run_step

    return open_run_step(
        raw_dir, data_rev, preset, overrides, tracking_uri, pipeline_run_id,
        retrain=retrain, pipeline_run_name=pipeline_run_name,
    )  # fmt: skip


@step_component
def close_run(tracking_uri: str, pipeline_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: end the MLflow run FINISHED, or FAILED when a step failed."""
    from components.tracking import close_run_step

    close_run_step(tracking_uri, pipeline_run_id, status.state, status.error_message)


def open_run_step(
    raw_dir: str,
    data_rev: str,
    preset: str,
    overrides: Sequence[str],
    tracking_uri: str,
    pipeline_run_id: str,
    *,
    retrain: bool = False,
    pipeline_run_name: str = "",
) -> tuple[str, str, str]:
    """(MLflow run id, data version, version already trained or "") for a pipeline run
    (``pipeline_run_id``: the job's uuid; ``pipeline_run_name``: its display name, a label)."""
    from components.pretrained import PRETRAINED_TAG
    from model_lib.data.fingerprint import tree_digest
    from model_lib.models.weights import describe_init
    from model_lib.presets import get_preset

    cfg = get_preset(preset, overrides)
    data_version = tree_digest(Path(raw_dir))
    logger.info("data %s at revision %s: content md5 %s", raw_dir, data_rev, data_version)
    uri = resolve_tracking_uri(tracking_uri)
    code = git_sha()
    overrides_json = json.dumps(list(overrides))
    earlier = None if retrain else find_trained(uri, data_version, code, preset, overrides_json)
    run_id = open_pipeline_run(
        uri,
        pipeline_run_id=pipeline_run_id,
        pipeline_run_name=pipeline_run_name,
        params={"preset": preset, "overrides": overrides_json, "raw_dir": raw_dir},
        tags={
            "data_rev": data_rev,
            "data_version": data_version,
            "git_sha": code,
            "preset": preset,
            # Where the DenseNet starts, as configured; the first training step replaces it
            # with the weights it loaded and adds their sha256.
            **({PRETRAINED_TAG: init} if (init := describe_init(cfg.model)) else {}),
        },
        config=cfg.model_dump(mode="json"),
    )
    if earlier is None:
        return run_id, data_version, ""
    version, by_run = earlier
    registry_client(uri).set_tag(run_id, TRAINED_AS_TAG, f"{version} {by_run}")
    logger.info("version %s was trained on this data, code and settings by pipeline run %s: "
                "nothing to train (retrain=True trains anyway)", version, by_run)  # fmt: skip
    return run_id, data_version, version


def find_trained(
    tracking_uri: str, data_version: str, code: str, preset: str, overrides_json: str
) -> tuple[str, str] | None:
    """(version, pipeline run id) of a registered version that a finished pipeline run trained
    on the same data content, code, preset and overrides; None when there is none, or when the
    code is not a clean commit (uncommitted changes could change the model)."""
    if code == "unknown" or code.endswith("+dirty"):
        return None
    client = registry_client(tracking_uri)
    runs = _pipeline_runs(
        client,
        EXPERIMENT_NAME,
        f"tags.data_version = '{data_version}' and tags.git_sha = '{code}' "
        f"and tags.preset = '{preset}' and attributes.status = 'FINISHED'",
    )
    for run in runs:
        if run.data.params.get("overrides") != overrides_json:
            continue
        pipeline_run_id = run.data.tags[PIPELINE_RUN_ID_TAG]
        if (version := registered_by(client, MODEL_NAME, pipeline_run_id)) is not None:
            return str(version.version), pipeline_run_id
    return None


def close_run_step(
    tracking_uri: str, pipeline_run_id: str, state: str, error_message: str | None = None
) -> str | None:
    """End the pipeline's MLflow run from the pipeline's final state; None if it never opened."""
    uri = resolve_tracking_uri(tracking_uri)
    run_id = find_pipeline_run(uri, pipeline_run_id)
    if run_id is None:
        logger.warning("pipeline run %s has no MLflow run to close", pipeline_run_id)
        return None
    succeeded = state == "SUCCEEDED"
    if not succeeded and error_message:
        registry_client(uri).set_tag(run_id, "cxrgaze.error", error_message[:4000])
    return close_pipeline_run(uri, run_id, succeeded=succeeded)
