"""Train-stage step: one stage of the cooperative training (1b, 2, 3 or 3') from the weights of
the stage before, tracked as a nested MLflow run.

The run logs the stage's settings as params, every epoch's metrics (``<stage>/<metric>`` at
step = epoch), the best epoch's metrics, the history and a loss-curve plot. A stage the preset
disables (3' unless enabled) passes the weights through and says so in the run.

Checkpoints live where a rerun of the step finds them: ``<root>/<parent run id>/<stage>-<digest
of the starting weights>/``, with ``<root>`` from ``$CXRGAZE_CHECKPOINT_ROOT`` (default: the
system temp folder's ``cxr-gaze-checkpoints``). A retried task (KFP ``set_retry``, a rerun of
the failed run) trains under the same pipeline run and the same parent MLflow run id, so a step
killed mid-stage resumes from its last epoch instead of starting over. On a cluster, point the
variable at a volume that outlives the pod (a PVC); a pod's own /tmp dies with it. The folder is
removed once the step has succeeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import mlflow
import torch
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.data_transfer import materialize
from components.ddp_launch import maybe_torchrun
from components.kfp_step import step_component
from components.pretrained import ensure_pretrained, pretrained_lineage
from components.stage_tracking import EpochMetrics, log_stage_artifacts
from components.tracking import SKIPPED_TAG, resolve_tracking_uri, step_run
from model_lib.presets import get_preset
from model_lib.training import experiment
from model_lib.training.checkpoint import load_checkpoint
from model_lib.training.experiment import CHECKPOINTS_DIR, StageOutcome
from model_lib.training.fit import LAST_CHECKPOINT

logger = logging.getLogger(__name__)

CHECKPOINT_ROOT_ENV = "CXRGAZE_CHECKPOINT_ROOT"
REQUIRE_GPU_ENV = "CXRGAZE_REQUIRE_GPU"
"""``true`` (or 1) on the cluster's GPU tasks: no visible GPU is then an error, not a CPU run."""
_SCRATCH_ROOT = "cxr-gaze-checkpoints"


def training_device() -> str:
    """``cuda`` when torch sees a GPU, else ``cpu``; with ``$CXRGAZE_REQUIRE_GPU=1`` no GPU is a
    one-line error (a node whose driver is too old for the image's CUDA, a missing device
    plugin), raised before any data moves. The pipeline sets it on GPU tasks from the pod's
    label, which kfp.local does not apply."""
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get(REQUIRE_GPU_ENV, "").lower() in ("1", "true"):
        raise RuntimeError(
            f"this step asked for a GPU but torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}) sees none: check that the node's NVIDIA driver supports "
            f"CUDA {torch.version.cuda} and that the pod got the GPU (nvidia-smi); "
            f"{REQUIRE_GPU_ENV}=false lets it train on the CPU"
        )
    return "cpu"


def default_checkpoint_root() -> Path:
    """``$CXRGAZE_CHECKPOINT_ROOT``, else ``cxr-gaze-checkpoints`` in the system temp folder."""
    return Path(os.environ.get(CHECKPOINT_ROOT_ENV) or Path(tempfile.gettempdir()) / _SCRATCH_ROOT)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def stage_workdir(
    parent_run_id: str, stage: str, init_weights: Path | None, root: Path | None = None
) -> Path:
    """Where a step keeps its checkpoints: the same folder for every attempt of one stage of one
    pipeline run from the same starting weights, another one for anything else.

    Raises:
        ValueError: an empty run id, or one that is not a plain folder name.
    """
    if not parent_run_id or parent_run_id in {".", ".."} or "/" in parent_run_id:
        raise ValueError(f"parent_run_id {parent_run_id!r} cannot key a checkpoint folder")
    start = "init" if init_weights is None else _file_digest(Path(init_weights))[:16]
    return (root or default_checkpoint_root()) / parent_run_id / f"{stage}-{start}"


def _resuming_at(workdir: Path, stage: str) -> int | None:
    """The epoch a killed attempt's ``last.pt`` resumes at, None when there is none."""
    last = workdir / CHECKPOINTS_DIR / stage / LAST_CHECKPOINT
    if not last.is_file():
        return None
    return len(load_checkpoint(last)["progress"]["history"])


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
    checkpoint_root: Path | None = None,
) -> StageOutcome:
    """Train ``stage`` of the preset on the store's train split (selecting on val) and write its
    best weights to ``weights_out``. Runs on the GPU when there is one, data-parallel under
    torchrun over every visible GPU when there are several (:mod:`components.ddp_launch`).

    Checkpoints go to :func:`stage_workdir` under ``checkpoint_root`` (default
    :func:`default_checkpoint_root`), so a rerun of a killed step resumes at the epoch after
    the last one it finished; the folder is deleted when the step succeeds."""
    device = training_device()
    cfg = get_preset(preset, overrides)
    spec = cfg.stage(stage)
    pretrained_tags: dict[str, str] = {}
    if init_weights is None:  # the first stage: its DenseNet starts from the pretrained weights
        # Fetched and checked before any data moves: unreachable weights fail the step at once.
        model_cfg, overrides, weights = ensure_pretrained(cfg.model, overrides)
        cfg = cfg.model_copy(update={"model": model_cfg})
        pretrained_tags = pretrained_lineage(model_cfg, weights)
    store, maps = materialize(Path(store)), materialize(Path(maps))
    params = {f"{stage}.{k}": v for k, v in spec.model_dump(mode="json").items()}
    init = None if init_weights is None else Path(init_weights)
    work = stage_workdir(parent_run_id, stage, init, checkpoint_root)
    if (epoch := _resuming_at(work, stage)) is not None:
        logger.info("stage %s: resuming at epoch %d from the checkpoints in %s", stage, epoch, work)
    else:
        logger.info("stage %s: checkpoints in %s", stage, work)
    with (
        step_run(resolve_tracking_uri(tracking_uri), parent_run_id, stage, params) as run,
        tempfile.TemporaryDirectory(prefix=f"cxr-gaze-{stage}-") as scratch,
    ):
        if pretrained_tags:  # on this run and on the pipeline's, where register finds them
            mlflow.set_tags(pretrained_tags)
            parent = mlflow.MlflowClient(resolve_tracking_uri(tracking_uri))
            for key, value in pretrained_tags.items():
                parent.set_tag(parent_run_id, key, value)
        callbacks = [EpochMetrics()]
        outcome = maybe_torchrun(
            stage, preset, overrides, Path(store), Path(maps), work, Path(weights_out),
            init_weights=init, callbacks=callbacks,
        )  # fmt: skip
        if outcome is None:
            outcome = experiment.train_stage(
                cfg,
                stage,
                Path(store),
                Path(maps),
                work,
                Path(weights_out),
                init_weights=init,
                callbacks=callbacks,
                progress=False,
                device=device,
            )
        mlflow.log_metric(f"{stage}/seconds", outcome.seconds)
        if outcome.fit is None:
            mlflow.set_tag(SKIPPED_TAG, f"stage {stage} is disabled in preset {preset}")
            logger.info("stage %s disabled: weights passed through", stage)
        else:
            best = {f"{stage}/best_{k}": v for k, v in outcome.fit.final_metrics.items()}
            mlflow.log_metrics({**best, f"{stage}/best_epoch": outcome.fit.best_epoch})
            log_stage_artifacts(outcome.fit, Path(scratch) / "artifacts")
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
    # Everything the step owes is written: the checkpoints have served their purpose.
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # the run's folder, once its last stage folder is gone
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
