"""Credentials never become pipeline parameters: a tracking URI that carries them is refused
before anything is submitted or run (they would be stored with the run and shown in the UI)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.tracking import refuse_credentials
from pipelines.cli import app

runner = CliRunner()
PLANTED = "s3cr3t-pw-5521"


@pytest.mark.parametrize(
    "uri",
    [f"http://alice:{PLANTED}@mlflow.example.org", "https://alice@mlflow.example.org:5000/x"],
)
def test_uri_with_credentials_is_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="carries credentials") as err:
        refuse_credentials(uri, "--tracking-uri")
    assert PLANTED not in str(err.value)


@pytest.mark.parametrize(
    "uri", ["", "http://mlflow.cxr-gaze.svc.cluster.local:5000", "sqlite:///mlflow.db"]
)
def test_bare_uris_pass(uri: str) -> None:
    refuse_credentials(uri, "--tracking-uri")


@pytest.mark.parametrize("command", ["submit", "schedule", "run"])
def test_cli_refuses_before_any_request_and_never_echoes_the_password(
    command: str, tmp_path: Path
) -> None:
    uri = f"http://alice:{PLANTED}@127.0.0.1:9"
    host = ["--host", "http://127.0.0.1:9", "--raw-dir", "/data/raw"]
    args = {
        "submit": ["submit", *host],
        "schedule": ["schedule", *host, "--name", "weekly", "--cron", "0 0 3 * * 1"],
        "run": ["run", "--raw-dir", str(tmp_path), "--pipeline-root", str(tmp_path / "p")],
    }[command]
    result = runner.invoke(app, [*args, "--tracking-uri", uri])
    assert result.exit_code == 2, result.output
    assert "carries credentials" in result.output
    assert PLANTED not in result.output
    assert "Traceback" not in result.output
