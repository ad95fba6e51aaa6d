"""Train-stage step: one stage of the cooperative training (1b, 2, 3 or 3') from the weights of
the stage before, tracked as a nested MLflow run.

The run logs the stage's settings as params, every epoch's metrics (``<stage>/<metric>`` at
step = epoch), the best epoch's metrics, the history and a loss-curve plot. A stage the preset
disables (3' unless enabled) passes the weights through and says so in the run.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import torch
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.data_transfer import materialize
from components.ddp_launch import maybe_torchrun
from components.kfp_step import step_component
from components.tracking import EpochMetrics, log_stage_artifacts, resolve_tracking_uri, step_run
from model_lib.presets import get_preset
from model_lib.training import experiment
from model_lib.training.experiment import StageOutcome

logger = logging.getLogger(__name__)


def train_stage_step(
    stage: str,
    preset: str,
    overrides: list[str],
    store: Path,
    maps: Path,
    weights_out: Path,
    *,
    init_weights: Path | None,
    tracking_uri: str,
    parent_run_id: str,
) -> StageOutcome:
    """Train ``stage`` of the preset on the store's train split (selecting on val) and write its
    best weights to ``weights_out``. Runs on the GPU when there is one, data-parallel under
    torchrun over every visible GPU when there are several (:mod:`components.ddp_launch`)."""
    cfg = get_preset(preset, overrides)
    spec = cfg.stage(stage)
    store, maps = materialize(Path(store)), materialize(Path(maps))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = {f"{stage}.{k}": v for k, v in spec.model_dump(mode="json").items()}
    with (
        step_run(resolve_tracking_uri(tracking_uri), parent_run_id, stage, params) as run,
        tempfile.TemporaryDirectory(prefix=f"cxr-gaze-{stage}-") as work,
    ):
        init = None if init_weights is None else Path(init_weights)
        callbacks = [EpochMetrics()]
        outcome = maybe_torchrun(
            stage, preset, overrides, Path(store), Path(maps), Path(work), Path(weights_out),
            init_weights=init, callbacks=callbacks,
        )  # fmt: skip
        if outcome is None:
            outcome = experiment.train_stage(
                cfg,
                stage,
                Path(store),
                Path(maps),
                Path(work),
                Path(weights_out),
                init_weights=init,
                callbacks=callbacks,
                progress=False,
                device=device,
            )
        mlflow.log_metric(f"{stage}/seconds", outcome.seconds)
        if outcome.fit is None:
            mlflow.set_tag("cxrgaze.skipped", f"stage {stage} is disabled in preset {preset}")
            logger.info("stage %s disabled: weights passed through", stage)
        else:
            best = {f"{stage}/best_{k}": v for k, v in outcome.fit.final_metrics.items()}
            mlflow.log_metrics({**best, f"{stage}/best_epoch": outcome.fit.best_epoch})
            log_stage_artifacts(outcome.fit, Path(work) / "artifacts")
            logger.info(
                "stage %s: %d epochs (best %d, %s) in %.0f s on %s; run %s",
                stage,
                len(outcome.fit.history),
                outcome.fit.best_epoch,
                outcome.fit.stopped_reason,
                outcome.seconds,
                device,
                run.info.run_id,
            )
    return outcome


def publish_stage(outcome: StageOutcome, model: Model, metrics: Metrics, preset: str) -> None:
    """Fill the step's output artifacts: the best epoch's metrics (none for a skipped stage)
    and the wall time; the model's stage and preset."""
    values = {"seconds": outcome.seconds}
    if outcome.fit is not None:
        values.update(outcome.fit.final_metrics)
        values.update(best_epoch=outcome.fit.best_epoch, epochs=len(outcome.fit.history))
    for key, value in values.items():
        metrics.log_metric(key, float(value))
    stage = "skipped" if outcome.fit is None else outcome.fit.stage
    model.metadata.update({"stage": stage, "preset": preset, "framework": "pytorch"})


@step_component
def train_stage(
    stage: str,
    preset: str,
    overrides: list,
    store: Input[Dataset],
    maps: Input[Dataset],
    init_model: Input[Model],
    tracking_uri: str,
    parent_run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """One training stage from the previous stage's best weights."""
    from components.train_stage import publish_stage, train_stage_step

    outcome = train_stage_step(
        stage,
        preset,
        overrides,
        store.path,
        maps.path,
        model.path,
        init_weights=init_model.path,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    publish_stage(outcome, model, metrics, preset)
