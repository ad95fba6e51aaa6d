"""MLflow plumbing shared by the register and promote steps: names, the tracking URI, the client.

Every step takes the tracking URI as an argument. The fluent MLflow API reads a process-wide URI,
so :func:`use_tracking_uri` sets it for the duration of a ``with`` block only and puts back what
was there before. Registry calls go through a client bound to the URI explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import requests
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import (
    MLFLOW_TRACKING_INSECURE_TLS,
    MLFLOW_TRACKING_SERVER_CERT_PATH,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient, set_tracking_uri

MODEL_NAME = "cxr-gaze"
CHAMPION, CHALLENGER, PREVIOUS_CHAMPION = "champion", "challenger", "previous_champion"
EXPERIMENT_NAME = "cxr-gaze"

WEIGHTS_SHA256_TAG = "weights_sha256"
PIPELINE_RUN_ID_TAG = "pipeline_run_id"
"""The pipeline job's uuid: unique per run, shared by a retried task of the same run."""
PIPELINE_RUN_NAME_TAG = "pipeline_run_name"
"""The run's display name in KFP: a label, not unique (two submits may share it)."""
VALIDATION_STATUS_TAG = "validation_status"

_TRACKING_ENV = "MLFLOW_TRACKING_URI"
_REACH_TIMEOUT_S = 5.0


class RegistryUnreachable(ConnectionError):
    """The tracking server does not answer; the message names its URI."""


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2026-11-25T21:30:00Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_reachable(tracking_uri: str, timeout_s: float = _REACH_TIMEOUT_S) -> None:
    """Fail fast, in one line naming the URI, when the tracking store cannot be reached.

    An HTTP server must answer ``GET /health`` (any status: a proxy in front may not route it,
    which still proves the host is up); MLflow's own client would retry an unreachable host for
    minutes. A ``sqlite:///`` file must sit in an existing folder.

    Raises:
        RegistryUnreachable: the server refuses, times out, or the folder is missing.
    """
    if tracking_uri.startswith(("http://", "https://")):
        # The same TLS settings MLflow's own client would use.
        verify = MLFLOW_TRACKING_SERVER_CERT_PATH.get() or not MLFLOW_TRACKING_INSECURE_TLS.get()
        try:
            requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s, verify=verify)
        except requests.RequestException as err:
            raise RegistryUnreachable(
                f"MLflow tracking server {tracking_uri} is unreachable: {type(err).__name__}"
            ) from err
    elif tracking_uri.startswith("sqlite:///"):
        folder = os.path.dirname(tracking_uri.removeprefix("sqlite:///")) or "."
        if not os.path.isdir(folder):
            raise RegistryUnreachable(
                f"MLflow tracking store {tracking_uri}: folder {folder} does not exist"
            )


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[MlflowClient]:
    """Point the fluent MLflow API at ``tracking_uri`` inside the block; yield a client for it.

    MLflow mirrors the URI into ``MLFLOW_TRACKING_URI``; the variable's previous value (or its
    absence) is restored on exit, so nothing leaks into later code or subprocesses.
    """
    check_reachable(tracking_uri)
    previous = os.environ.get(_TRACKING_ENV)
    set_tracking_uri(tracking_uri)
    try:
        yield MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    finally:
        # set_tracking_uri(None) clears both MLflow's setting and the environment variable.
        set_tracking_uri(previous)


def registry_client(tracking_uri: str) -> MlflowClient:
    """A client whose tracking and registry calls both go to ``tracking_uri`` (checked first)."""
    check_reachable(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version ``alias`` points to, or None when the alias (or the model) does not exist.

    MLflow 3.17 (sqlite store and REST alike) raises ``MlflowException`` with error code
    ``INVALID_PARAMETER_VALUE`` and "alias ... not found" for a missing alias, and
    ``RESOURCE_DOES_NOT_EXIST`` for a missing model; anything else is raised.
    """
    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException as err:
        missing_alias = err.error_code == "INVALID_PARAMETER_VALUE" and "not found" in err.message
        if missing_alias or err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def registered_by(
    client: MlflowClient, model_name: str, pipeline_run_id: str
) -> ModelVersion | None:
    """The version an earlier registration of ``pipeline_run_id`` created, if any (the oldest
    one should there be several)."""
    found = client.search_model_versions(
        f"name='{model_name}' and tags.{PIPELINE_RUN_ID_TAG}='{pipeline_run_id}'"
    )
    return min(found, key=lambda mv: int(mv.version)) if found else None
