"""`cxrgaze run` checks the pretrained weights before the pipeline starts: the `paper` preset
with an empty torch.hub cache and no reachable server stops in seconds with one line."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model_lib.models.pretrained import MIRROR_ENV
from pipelines.cli import app

runner = CliRunner()


def test_paper_without_reachable_weights_stops_before_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv(MIRROR_ENV, dead)
    raw = tmp_path / "raw"
    raw.mkdir()
    root, db = tmp_path / "pipeline", tmp_path / "mlflow.db"
    start = time.perf_counter()
    result = runner.invoke(
        app,
        ["run", "--raw-dir", str(raw), "--preset", "paper", "--tracking-uri", f"sqlite:///{db}",
         "--pipeline-root", str(root)],
    )  # fmt: skip
    assert time.perf_counter() - start < 15
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    assert "DenseNet201_Weights.IMAGENET1K_V1 unavailable" in lines[0]
    assert f"{dead}/densenet201-c1103571.pth failed" in lines[0]
    assert "--set model.pretrained_weights=PATH|URI" in lines[0]
    assert not root.exists() and not db.exists()  # nothing started
