"""`kill -9` of a training step mid-stage, then the same command again: the rerun finds the
killed attempt's checkpoints, repeats at most the epoch that was cut short, finishes the stage,
and ends with exactly the weights an uninterrupted run trains (``fit_stage`` resumes exactly)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.tracking import STEP_TAG, open_pipeline_run
from components.train_stage import CHECKPOINT_ROOT_ENV, stage_workdir
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training import experiment
from model_lib.training.checkpoint import load_checkpoint, save_checkpoint
from model_lib.training.experiment import CHECKPOINTS_DIR
from model_lib.training.fit import LAST_CHECKPOINT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
STAGE, EPOCHS = "s3", 4
OVERRIDES = [
    f"stages.{STAGE}.max_epochs={EPOCHS}",
    # Every epoch runs: no early stop, no LR drop (ci's patience is 2-3 epochs).
    f"stages.{STAGE}.early_stopping_patience={EPOCHS}",
    f"stages.{STAGE}.lr_patience={EPOCHS}",
]
KILL_AT_EPOCH = 2
TIMEOUT_S = 120.0

# The step as a pipeline task runs it, in a process of its own.
STEP = """
import json, logging, sys
from pathlib import Path
from components.train_stage import train_stage_step
logging.basicConfig(level=logging.INFO)
stage, store, maps, out, init, uri, parent, overrides = sys.argv[1:]
train_stage_step(stage, "ci", json.loads(overrides), Path(store), Path(maps), Path(out),
                 init_weights=Path(init), tracking_uri=uri, parent_run_id=parent)
"""


def epochs_done(last: Path, seen: list[float]) -> int:
    """Epochs ``last.pt`` records, read again only when the file changed."""
    try:
        mtime = last.stat().st_mtime_ns
    except FileNotFoundError:
        return 0
    if seen and seen[0] == mtime:
        return int(seen[1])
    done = len(load_checkpoint(last)["progress"]["history"])
    seen[:] = [mtime, done]
    return done


def test_a_killed_step_resumes_from_its_last_checkpoint(
    ci_store: tuple[Path, Path], tmp_path: Path
) -> None:
    store, maps = ci_store
    cfg = get_preset("ci", OVERRIDES)
    torch.manual_seed(11)
    init = tmp_path / "init.pt"
    save_checkpoint(init, {"model": build_model(cfg.model).state_dict()})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = open_pipeline_run(uri, pipeline_run_id="faults-kill", params={}, tags={}, config={})
    root = tmp_path / "checkpoints"
    last = stage_workdir(parent, STAGE, init, root) / CHECKPOINTS_DIR / STAGE / LAST_CHECKPOINT
    out = tmp_path / "out" / f"{STAGE}.pt"
    command = [sys.executable, "-c", STEP, STAGE, str(store), str(maps), str(out), str(init),
               uri, parent, json.dumps(OVERRIDES)]  # fmt: skip
    env = {**os.environ, CHECKPOINT_ROOT_ENV: str(root), "PYTHONPATH": str(ROOT)}

    first = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    seen: list[float] = []
    deadline = time.monotonic() + TIMEOUT_S
    while epochs_done(last, seen) < KILL_AT_EPOCH:
        if first.poll() is not None:
            pytest.fail(f"the step ended before the kill ({first.returncode}):\n"
                        f"{first.stderr.read()[-3000:]}")  # fmt: skip
        assert time.monotonic() < deadline, f"no epoch {KILL_AT_EPOCH} checkpoint in {last}"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    first.stderr.close()
    killed_at = time.time()
    assert first.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed step must not leave weights behind"
    resume_at = epochs_done(last, [])  # what the dead process left: the rerun's first epoch
    assert KILL_AT_EPOCH <= resume_at < EPOCHS

    rerun = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    # The same stage uninterrupted, in this process, while the rerun starts up.
    reference = experiment.train_stage(
        cfg, STAGE, store, maps, tmp_path / "reference", tmp_path / "reference.pt",
        init_weights=init, progress=False,
    )  # fmt: skip
    _, log = rerun.communicate(timeout=TIMEOUT_S)
    assert rerun.returncode == 0, log[-3000:]
    assert f"resuming at epoch {resume_at}" in log
    assert not last.parent.exists(), "the checkpoints of a finished step are removed"

    # Which epochs each attempt trained, from the step's MLflow run (one run for both attempts).
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.{STEP_TAG} = '{STAGE}'",
    )
    logged = client.get_metric_history(run.info.run_id, f"{STAGE}/train_loss")
    by_rerun = sorted(m.step for m in logged if m.timestamp / 1000 > killed_at)
    by_first = sorted(m.step for m in logged if m.timestamp / 1000 <= killed_at)
    assert by_rerun == list(range(resume_at, EPOCHS))  # from the epoch after the checkpoint
    assert set(by_first) <= set(range(resume_at))  # nothing before it trained twice
    history = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, f"{STAGE}_history.json", str(tmp_path))
        ).read_text()
    )
    assert reference.fit is not None and len(reference.fit.history) == EPOCHS
    assert history == reference.fit.history
    ours, theirs = load_checkpoint(out)["model"], load_checkpoint(reference.weights)["model"]
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_attempts_of_one_stage_share_a_folder_and_nothing_else_does(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights a")
    b.write_bytes(b"weights b")
    root = tmp_path / "root"
    here = stage_workdir("run1", "s2", a, root)
    assert here == stage_workdir("run1", "s2", tmp_path / "a.pt", root)  # a retried attempt
    assert here.parent == root / "run1"
    others = {
        stage_workdir(run, stage, init, root)
        for run, stage, init in [("run2", "s2", a), ("run1", "s3", a), ("run1", "s2", b),
                                 ("run1", "s2", None)]
    }  # fmt: skip
    assert here not in others and len(others) == 4
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="cannot key a checkpoint folder"):
            stage_workdir(bad, "s2", None, root)
