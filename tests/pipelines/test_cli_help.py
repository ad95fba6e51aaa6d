"""What the command line shows: an example in every help page, progress, and --quiet."""

from __future__ import annotations

import io
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.local_run import _Progress
from tests.pipelines.test_cli_data import write_params

runner = CliRunner()


def command_paths() -> list[list[str]]:
    """Every command and command group of the CLI, as the words that reach it."""
    paths: list[list[str]] = [[]]

    def walk(cmd: click.Command, prefix: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "cxrgaze")
def test_every_help_page_shows_an_example(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`cxrgaze {' '.join(path)} --help` shows no example"


def test_the_walk_reaches_nested_commands() -> None:
    paths = {" ".join(p) for p in command_paths()}
    assert {"data versions", "data rollback", "model rollback", "run", "ingest"} <= paths


@pytest.mark.integration
def test_ingest_shows_a_progress_bar_unless_quiet(tiny_release: Path, tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml")
    args = ["ingest", "--egd-root", str(tiny_release / "egd-cxr"), "--images-root",
            str(tiny_release / "mimic-cxr"), "--params", str(params), "--workers", "1"]  # fmt: skip
    loud = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert loud.exit_code == 0, loud.output
    assert "ingest: 100%" in loud.stderr
    quiet = runner.invoke(app, ["--quiet", *args, "--out", str(tmp_path / "b")])
    assert quiet.exit_code == 0, quiet.output
    assert "%|" not in quiet.stderr and "packed store" in quiet.stdout


def test_run_progress_shows_steps_and_training_epochs(tmp_path: Path) -> None:
    out = io.StringIO()
    progress = _Progress(tmp_path / "unused.log", out)
    for line in (
        "Executing task 'train-stage-2'",
        "progress: stage s2 epoch 3/14: train_loss 0.5120, val_loss 0.4980",
        "Task 'train-stage-2' finished with status SUCCESS",
    ):
        progress._line(line)
    lines = out.getvalue().splitlines()
    assert "train-stage-2 ..." in lines[0]
    assert lines[1].endswith("s2 epoch 3/14: train_loss 0.5120, val_loss 0.4980")
    assert "train-stage-2: success" in lines[2]


def test_run_progress_follows_the_epoch_file_while_the_log_is_silent(tmp_path: Path) -> None:
    import time

    log, epochs, out = tmp_path / "run.log", tmp_path / "run.progress", io.StringIO()
    log.write_text("Executing task 'train-stage'\n")
    epochs.write_text("")
    progress = _Progress(log, out, epochs)
    progress.start()
    with epochs.open("a") as fh:  # a step appends while kfp.local holds its output back
        fh.write("progress: stage s1b epoch 1/3: train_loss 0.9000\n")
    deadline = time.monotonic() + 5
    while "s1b epoch 1/3" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    progress.done.set()
    progress.join()
    lines = out.getvalue().splitlines()
    assert "train-stage ..." in lines[0] and lines[1].endswith("s1b epoch 1/3: train_loss 0.9000")
    # The same line in a step's own log (the executor's INFO record) is not shown twice.
    progress._line("[KFP Executor INFO]: stage s1b epoch 1/3: train_loss 0.9000")
    assert len(out.getvalue().splitlines()) == 2
