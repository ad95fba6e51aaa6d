"""MLflow logging of one training stage, inside the stage's nested run: every epoch's metrics
(and a progress line), then the history and loss curves. Separate from
:mod:`components.tracking` so that the steps that only open and close runs do not import torch."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from components.kfp_step import PROGRESS_ENV
from components.tracking import log_artifact_checked
from model_lib.training.callbacks import Callback
from model_lib.training.fit import FitResult
from model_lib.training.stages import StageSpec

logger = logging.getLogger(__name__)


class EpochMetrics(Callback):
    """Logs each epoch's metrics to the active run, keyed ``<stage>/<metric>``, step = epoch,
    and one log line per epoch (``cxrgaze run`` shows it as the step's progress)."""

    def __init__(self) -> None:
        self.max_epochs: dict[str, int] = {}

    def on_stage_start(self, spec: StageSpec, start_epoch: int) -> None:
        self.max_epochs[spec.name] = spec.max_epochs

    def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"{stage}/{k}": float(v) for k, v in metrics.items()}, step=epoch)
        losses = ", ".join(
            f"{k} {metrics[k]:.4f}" for k in ("train_loss", "val_loss") if k in metrics
        )
        line = f"stage {stage} epoch {epoch + 1}/{self.max_epochs.get(stage, '?')}: {losses}"
        logger.info("%s", line)
        if progress := os.environ.get(PROGRESS_ENV):  # a local run shows it as it happens
            with open(progress, "a", encoding="utf-8") as fh:
                fh.write(f"progress: {line}\n")


def log_stage_artifacts(fit: FitResult, folder: Path) -> None:
    """The stage's history (JSON) and its loss curves (PNG) into the active run."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    history = folder / f"{fit.stage}_history.json"
    history.write_text(json.dumps(fit.history, indent=2) + "\n", encoding="utf-8")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = range(len(fit.history))
    for key in ("train_loss", "val_loss"):
        ax.plot(epochs, [h.get(key, float("nan")) for h in fit.history], marker="o", label=key)
    ax.axvline(fit.best_epoch, color="grey", linestyle=":", label=f"best epoch {fit.best_epoch}")
    ax.set(xlabel="epoch", ylabel="loss", title=f"stage {fit.stage}")
    ax.legend()
    fig.tight_layout()
    curves = folder / f"{fit.stage}_loss.png"
    fig.savefig(curves, dpi=90)
    plt.close(fig)
    run_id = mlflow.active_run().info.run_id
    client, uri = MlflowClient(), mlflow.get_tracking_uri()
    for path in (history, curves):
        log_artifact_checked(client, run_id, path, uri)
