"""Register step: log the trained model as a pyfunc, register a new version of ``cxr-gaze`` with
its lineage, and point the ``challenger`` alias at it.

Re-running with the same ``pipeline_run_id`` returns the version that run registered instead of
registering a duplicate (a retried pipeline task must not create a second candidate).

The upload rides out a short object-store outage on MLflow's own per-request retries (see
:mod:`components.tracking`); logging the whole model again would not be safe to repeat (each
call makes a new logged model), so a failure that outlasts them fails the step before any
version exists, and a retried task starts clean. After the upload the weights are read back and
their sha256 compared with the one the version is tagged with.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow.artifacts
from kfp.dsl import Artifact, Input, Model
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel
from mlflow.tracking import MlflowClient
from mlflow.tracking.fluent import active_run, log_metrics, set_tags, start_run
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.kfp_step import step_component
from components.model_package import (
    WEIGHTS_ARTIFACT,
    LoggedPackage,
    PackageConfig,
    log_package,
    read_state_dict,
)
from components.registry import (
    CHALLENGER,
    EXPERIMENT_NAME,
    MODEL_NAME,
    VALIDATION_STATUS_TAG,
    WEIGHTS_SHA256_TAG,
    registered_by,
    use_tracking_uri,
    utc_now,
)
from components.tracking import check_artifact, uploading
from model_lib.presets import ExperimentConfig

logger = logging.getLogger(__name__)

METRICS_TAG = "metrics"


class Lineage(BaseModel):
    """Where a model came from; every field becomes a tag of the version and of the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_rev: str = Field(min_length=1, description="DVC/git revision of the raw data")
    data_md5: str = Field(min_length=1, description="md5 of the data the model was trained on")
    git_sha: str = Field(min_length=1, description="commit of the code")
    # The idempotency key: quoted inside an MLflow filter string, so no quotes or backslashes.
    pipeline_run_id: str = Field(min_length=1, pattern=r"^[^'\"\\]+$")
    preset: str = Field(min_length=1)
    overrides: tuple[str, ...] = ()
    pretrained_weights: str = Field(
        "",
        description="where the DenseNet started: a torchvision weights name, a path or URI, "
        "'random initialisation'; empty for an arch without DenseNet",
    )
    pretrained_sha256: str = Field("", description="sha256 of the pretrained weights file")

    def tags(self) -> dict[str, str]:
        """String tags; ``overrides`` as a JSON list."""
        values = self.model_dump()
        values["overrides"] = json.dumps(list(self.overrides))
        return values


@dataclass(frozen=True)
class RegistrationResult:
    """``version`` of ``model_name``; ``model_uri`` ``models:/<name>/<version>``; the run that
    holds the logged model; ``reused`` when an earlier call with the same pipeline run did the
    registering."""

    version: str
    model_uri: str
    run_id: str
    weights_sha256: str
    reused: bool


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested mapping as ``{"a.b": value}``; strings, lists and booleans
    (class names, confusion matrices, flags) are left out."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def check_uploaded_weights(client: MlflowClient, package: LoggedPackage, tracking_uri: str) -> None:
    """Read the logged model's weights back from the tracking store and compare their sha256.

    Raises:
        ArtifactUploadError: a download fails or the stored weights differ (names the file).
    """
    location = client.get_logged_model(package.info.model_id).artifact_location.rstrip("/")
    with (
        tempfile.TemporaryDirectory(prefix="cxr-gaze-mlmodel-") as tmp,
        uploading(f"{location}/MLmodel", tracking_uri, verb="reading back"),
    ):
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/MLmodel", dst_path=tmp, tracking_uri=tracking_uri
        )
        flavor = MlflowModel.load(local).flavors["python_function"]
    weights = flavor["artifacts"][WEIGHTS_ARTIFACT]["path"]
    check_artifact(f"{location}/{weights}", package.weights_sha256, tracking_uri)


def _lineage(lineage: Lineage | Mapping[str, Any]) -> Lineage:
    if isinstance(lineage, Lineage):
        return lineage
    try:
        return Lineage.model_validate(dict(lineage))
    except ValidationError as err:
        raise ValueError(f"lineage: {err}") from err


def _ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _experiment_id(
    client: MlflowClient, experiment_name: str, artifact_location: str | None
) -> str:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(experiment_name, artifact_location=artifact_location)


def register_model(
    weights_path: Path,
    config: PackageConfig | ExperimentConfig | Path,
    metrics: Mapping[str, Any],
    lineage: Lineage | Mapping[str, Any],
    *,
    tracking_uri: str,
    run_id: str | None = None,
    model_name: str = MODEL_NAME,
    experiment_name: str = EXPERIMENT_NAME,
    artifact_location: str | None = None,
) -> RegistrationResult:
    """Log, register and mark as ``challenger`` one trained model.

    Args:
        weights_path: a state dict file or a training checkpoint (its ``model`` entry is used).
        config: the network and preprocessing geometry: a :class:`PackageConfig`, an
            ``ExperimentConfig``, or the path of its JSON (``experiment.json``).
        metrics: test metrics, possibly nested (an evaluation summary); numeric leaves are
            logged to the run and summarised in the version's ``metrics`` tag.
        lineage: :class:`Lineage` fields (``data_rev``, ``data_md5``, ``git_sha``,
            ``pipeline_run_id``, ``preset``, ``overrides``).
        tracking_uri: the tracking server (also the registry), e.g. ``http://host:5000`` or
            ``sqlite:///mlflow.db``.
        run_id: an existing run to log the model into (the run active in this process, or
            one this call resumes and then ends); by default a new run in ``experiment_name``.
        artifact_location: where the experiment keeps artifacts if this call creates it (a
            sqlite store otherwise defaults to ``./mlruns``); ignored when it exists.

    Raises:
        RegistryUnreachable: the tracking server does not answer (one line naming the URI).
        ValueError / FileNotFoundError: bad lineage, config or weights (naming the field or
            file), before anything is written to the registry.
        ArtifactUploadError: the model's upload failed after MLflow's retries, or its weights
            came back with another sha256; no version is registered.
    """
    lineage = _lineage(lineage)
    package = PackageConfig.load(config)
    state = read_state_dict(weights_path, package)
    flat = flatten_metrics(metrics)
    with use_tracking_uri(tracking_uri) as client:
        earlier = registered_by(client, model_name, lineage.pipeline_run_id)
        if earlier is not None:
            if VALIDATION_STATUS_TAG not in earlier.tags:
                # Not gated yet: finish what an interrupted call may have left undone.
                client.set_registered_model_alias(model_name, CHALLENGER, earlier.version)
            logger.info(
                "pipeline run %s already registered %s version %s",
                lineage.pipeline_run_id,
                model_name,
                earlier.version,
            )
            return RegistrationResult(
                version=str(earlier.version),
                model_uri=f"models:/{model_name}/{earlier.version}",
                run_id=earlier.run_id,
                weights_sha256=earlier.tags.get(WEIGHTS_SHA256_TAG, ""),
                reused=True,
            )

        active = active_run()
        if active is not None and active.info.run_id == run_id:
            run_context = nullcontext(active)
        elif run_id is not None:
            run_context = start_run(run_id=run_id)
        else:
            run_context = start_run(
                experiment_id=_experiment_id(client, experiment_name, artifact_location),
                run_name=f"register-{lineage.pipeline_run_id}",
            )
        with run_context as run:
            # Tags, not params: a caller's run may hold params of the same name, and MLflow
            # refuses to change a param.
            set_tags(lineage.tags())
            if flat:
                log_metrics(flat)
            with uploading(f"the model from {weights_path}", tracking_uri):
                package_info = log_package(state, package)
            check_uploaded_weights(client, package_info, tracking_uri)

        _ensure_registered_model(client, model_name)
        tags = {
            **lineage.tags(),
            WEIGHTS_SHA256_TAG: package_info.weights_sha256,
            METRICS_TAG: json.dumps(flat, sort_keys=True),
            "registered_at": utc_now(),
        }
        mv = client.create_model_version(
            name=model_name,
            source=package_info.info.model_uri,
            run_id=run.info.run_id,
            tags=tags,
            description=(
                f"data {lineage.data_rev} (md5 {lineage.data_md5}), code {lineage.git_sha}, "
                f"pipeline run {lineage.pipeline_run_id}, preset {lineage.preset}"
            ),
            model_id=package_info.info.model_id,
        )
        client.set_registered_model_alias(model_name, CHALLENGER, mv.version)
        logger.info(
            "registered %s version %s from %s (run %s) as %s",
            model_name,
            mv.version,
            weights_path,
            run.info.run_id,
            CHALLENGER,
        )
        return RegistrationResult(
            version=str(mv.version),
            model_uri=f"models:/{model_name}/{mv.version}",
            run_id=run.info.run_id,
            weights_sha256=package_info.weights_sha256,
            reused=False,
        )


def register_step(
    weights: Path,
    summary: Path,
    preset: str,
    overrides: list[str],
    *,
    data_rev: str,
    data_md5: str,
    pipeline_run_id: str,
    tracking_uri: str,
    parent_run_id: str,
) -> RegistrationResult:
    """The pipeline's register step: the final weights with the test summary as metrics and
    the run's lineage, logged into the nested run ``register``."""
    from components.pretrained import PRETRAINED_SHA256_TAG, PRETRAINED_TAG
    from components.registry import registry_client
    from components.tracking import git_sha, resolve_tracking_uri, step_run
    from model_lib.presets import get_preset

    uri = resolve_tracking_uri(tracking_uri)
    metrics = json.loads(Path(summary).read_text(encoding="utf-8"))
    # The first training step tagged the pipeline's run with the weights it started from.
    run_tags = registry_client(uri).get_run(parent_run_id).data.tags
    lineage = Lineage(
        data_rev=data_rev,
        data_md5=data_md5,
        git_sha=git_sha(),
        pipeline_run_id=pipeline_run_id,
        preset=preset,
        overrides=tuple(overrides),
        pretrained_weights=run_tags.get(PRETRAINED_TAG, ""),
        pretrained_sha256=run_tags.get(PRETRAINED_SHA256_TAG, ""),
    )
    with step_run(uri, parent_run_id, "register") as run:
        return register_model(
            Path(weights),
            get_preset(preset, overrides),
            metrics,
            lineage,
            tracking_uri=uri,
            run_id=run.info.run_id,
        )


@step_component
def register(
    model: Input[Model],
    summary: Input[Artifact],
    preset: str,
    overrides: list,
    data_rev: str,
    data_md5: str,
    pipeline_run_id: str,
    tracking_uri: str,
    parent_run_id: str,
) -> NamedTuple("RegisterOutputs", [("version", str), ("model_uri", str)]):
    """A new version of the registered model, alias ``challenger``, with lineage tags."""
    from components.register import register_step

    result = register_step(
        model.path,
        summary.path,
        preset,
        overrides,
        data_rev=data_rev,
        data_md5=data_md5,
        pipeline_run_id=pipeline_run_id,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    return (result.version, result.model_uri)
