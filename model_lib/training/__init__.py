"""Multi-stage cooperative learning: stages as data, one fit loop, checkpoints that resume
exactly, mixed precision, and inference helpers. Nothing here logs: callers pass callbacks."""

from model_lib.training.callbacks import Callback
from model_lib.training.chain import run_stages, split_loaders
from model_lib.training.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from model_lib.training.evaluate import predict, stage_val_loss
from model_lib.training.experiment import (
    EvaluationResult,
    ExperimentResult,
    StageOutcome,
    evaluate_experiment,
    fixated_pixels,
    fixation_maps,
    train_experiment,
    train_stage,
)
from model_lib.training.fit import BEST_CHECKPOINT, LAST_CHECKPOINT, FitResult, fit_stage
from model_lib.training.precision import PrecisionPlan, cpu_has_bf16_units, resolve_precision
from model_lib.training.stages import PAPER_STAGES, StageSpec, frozen_parts

__all__ = [
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "PAPER_STAGES",
    "Callback",
    "EvaluationResult",
    "ExperimentResult",
    "FitResult",
    "PrecisionPlan",
    "StageOutcome",
    "StageSpec",
    "cpu_has_bf16_units",
    "evaluate_experiment",
    "fit_stage",
    "fixated_pixels",
    "fixation_maps",
    "frozen_parts",
    "load_checkpoint",
    "load_model_weights",
    "predict",
    "resolve_precision",
    "run_stages",
    "save_checkpoint",
    "split_loaders",
    "stage_val_loss",
    "train_experiment",
    "train_stage",
]
