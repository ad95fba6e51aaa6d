"""Model rollback and lineage on an embedded registry, through the library and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from components.model_ops import (
    NothingToRollBack,
    lineage_text,
    rollback_champion,
    version_lineage,
)
from components.promote import Decision, promote
from components.register import register_model
from model_lib.presets import ExperimentConfig
from pipelines.cli import app
from tests.components.conftest import Backend

METRICS = {
    "classification": {"auc_macro": 0.91, "accuracy": 0.8},
    "saliency": {"cc": {"mean": 0.7}},
}


def register(backend: Backend, weights: Path, cfg: ExperimentConfig, run: str) -> str:
    lineage = {"data_rev": f"rev-{run}", "data_md5": "d" * 32, "git_sha": "abc1234",
               "pipeline_run_id": run, "preset": "ci", "overrides": ["seed=1"],
               "pretrained_weights": "random initialisation"}  # fmt: skip
    return register_model(
        weights, cfg, METRICS, lineage, tracking_uri=backend.tracking_uri,
        artifact_location=backend.artifact_location,
    ).version  # fmt: skip


def approve(backend: Backend, version: str, champion: str | None) -> None:
    details = {"compared_to_champion": champion is not None, "champion_version": champion}
    promote(Decision(True, ["pass: test"], details), version, tracking_uri=backend.tracking_uri)


@pytest.fixture
def two_champions(
    sqlite_backend: Backend, weights_file: Path, ci_config: ExperimentConfig
) -> Backend:
    """v1 was champion, v2 is: previous_champion -> v1, champion -> v2."""
    v1 = register(sqlite_backend, weights_file, ci_config, "run-1")
    approve(sqlite_backend, v1, None)
    v2 = register(sqlite_backend, weights_file, ci_config, "run-2")
    approve(sqlite_backend, v2, v1)
    return sqlite_backend


def aliases(backend: Backend) -> dict[str, str]:
    model = MlflowClient(backend.tracking_uri).get_registered_model("cxr-gaze")
    return {alias: str(v) for alias, v in model.aliases.items()}


def test_rollback_moves_champion_back_once_and_records_it(two_champions: Backend) -> None:
    uri = two_champions.tracking_uri
    assert aliases(two_champions)["champion"] == "2"
    first = rollback_champion(uri)
    assert (first.champion_was, first.champion, first.moved) == ("2", "1", True)
    assert aliases(two_champions) == {"champion": "1", "previous_champion": "1", "challenger": "2"}
    again = rollback_champion(uri)  # idempotent
    assert not again.moved and again.champion == "1"
    assert "already v1" in again.describe()
    client = MlflowClient(uri)
    v2 = client.get_model_version("cxr-gaze", "2").tags
    assert v2["rolled_back_to"] == "1" and v2["rolled_back_at"]
    history = client.get_model_version("cxr-gaze", "1").tags["alias_history"].splitlines()
    assert history[-1].endswith("champion -> v1 (rollback from v2)")
    assert sum("rollback" in line for line in history) == 1


def test_rollback_needs_a_previous_champion(
    sqlite_backend: Backend, weights_file: Path, ci_config: ExperimentConfig
) -> None:
    with pytest.raises(NothingToRollBack, match="no champion"):
        rollback_champion(sqlite_backend.tracking_uri)
    approve(sqlite_backend, register(sqlite_backend, weights_file, ci_config, "r1"), None)
    with pytest.raises(NothingToRollBack, match="no previous_champion to roll v1 back to"):
        rollback_champion(sqlite_backend.tracking_uri)


def test_lineage_of_a_version_and_of_an_alias(two_champions: Backend) -> None:
    uri = two_champions.tracking_uri
    info = version_lineage(uri, "champion")
    assert info["version"] == "2" and info["aliases"] == ["challenger", "champion"]
    assert info["lineage"] == {
        "data_rev": "rev-run-2", "data_md5": "d" * 32, "git_sha": "abc1234", "preset": "ci",
        "overrides": '["seed=1"]', "pipeline_run_id": "run-2",
        "pretrained_weights": "random initialisation", "pretrained_sha256": "",
    }  # fmt: skip
    assert info["metrics"]["classification.auc_macro"] == 0.91
    assert info["validation_status"] == "approved"
    text = lineage_text(version_lineage(uri, "1"))
    assert text.startswith("cxr-gaze version 1 (previous_champion)")
    assert "data_rev: rev-run-1" in text and "classification.auc_macro 0.9100" in text
    assert "pretrained_weights: random initialisation" in text
    with pytest.raises(LookupError, match="no version 9"):
        version_lineage(uri, "9")
    with pytest.raises(LookupError, match="no alias 'staging'"):
        version_lineage(uri, "staging")


def test_cli_rollback_and_lineage(two_champions: Backend) -> None:
    uri = ["--tracking-uri", two_champions.tracking_uri]
    runner = CliRunner()
    rolled = runner.invoke(app, ["model", "rollback", *uri])
    assert rolled.exit_code == 0, rolled.output
    assert "champion v2 -> v1" in rolled.output
    shown = runner.invoke(app, ["lineage", "champion", *uri])
    assert shown.exit_code == 0 and "cxr-gaze version 1" in shown.output
    missing = runner.invoke(app, ["lineage", "7", *uri])
    assert missing.exit_code == 2 and "no version 7" in missing.output
