"""Evaluate step: score the trained model on the test split, next to the center-prior baseline,
check the promotion floors, and write the report.

Outputs: the summary (JSON), the HTML report, KFP metrics (scalars, confusion matrix, ROC) and a
nested MLflow run ``evaluate`` with the same numbers and files. ``passed_floors`` gates the
promotion in the DAG; the champion comparison happens in the promote step.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import torch
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.data_transfer import materialize
from components.kfp_step import step_component
from components.promote import Decision, decide, policy_from_mapping
from components.register import flatten_metrics
from components.report import evaluation_html
from components.scores import Scores
from components.tracking import resolve_tracking_uri, step_run
from model_lib.metrics import roc_curve
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training import evaluate_experiment, load_model_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationOutcome:
    """The test summary (``EvaluationResult.to_dict()``), the floor checks, and what the KFP
    classification metrics need."""

    summary: dict[str, Any]
    floors: Decision
    probs: np.ndarray
    labels: np.ndarray

    @property
    def headline(self) -> dict[str, float]:
        cls = self.summary["classification"]
        return {
            "auc_macro": cls["auc_macro"],
            "accuracy": cls["accuracy"],
            "cc_mean": self.summary["saliency"]["cc"]["mean"],
            "center_prior_cc_mean": self.summary["center_prior"]["cc"]["mean"],
            "kld_mean": self.summary["saliency"]["kld"]["mean"],
            "nss_mean": self.summary["saliency"]["nss"]["mean"],
        }


def evaluate_step(
    preset: str,
    overrides: list[str],
    store: Path,
    maps: Path,
    weights: Path,
    policy: Mapping[str, Any],
    summary_path: Path,
    report_path: Path,
    *,
    tracking_uri: str,
    parent_run_id: str,
) -> EvaluationOutcome:
    """Evaluate the weights on the test split; write the summary (JSON) and the report (HTML)
    and log both, with the metrics, to the nested run ``evaluate``."""
    cfg = get_preset(preset, overrides)
    rules = policy_from_mapping(policy, "promotion_policy")
    model = build_model(cfg.model)
    load_model_weights(model, Path(weights))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    store, maps = materialize(Path(store)), materialize(Path(maps))
    result = evaluate_experiment(model, cfg, store, maps, device=device)
    summary = result.to_dict()
    scores = Scores(probabilities=result.probs, labels=result.labels, cc=result.saliency["cc"])
    floors = decide(rules, scores, None)
    summary_path, report_path = Path(summary_path), Path(report_path)
    summary_text = json.dumps(summary, indent=2) + "\n"
    summary_path.write_text(summary_text, encoding="utf-8")
    title = f"cxr-gaze evaluation: preset {preset}"
    page = evaluation_html(summary, result.probs, result.labels, floors.reasons, title)
    report_path.write_text(page, encoding="utf-8")
    outcome = EvaluationOutcome(summary, floors, result.probs, result.labels)
    with step_run(resolve_tracking_uri(tracking_uri), parent_run_id, "evaluate"):
        mlflow.log_metrics({f"test/{k}": v for k, v in flatten_metrics(summary).items()})
        mlflow.log_metrics({f"test/{k}": v for k, v in outcome.headline.items()})
        mlflow.set_tag("passed_floors", str(floors.approved).lower())
        mlflow.log_text(summary_text, "evaluation/evaluation.json")
        mlflow.log_text(page, "evaluation/report.html")
    logger.info(
        "test: macro AUC %.3f, mean CC %.3f (center prior %.3f); floors %s",
        outcome.headline["auc_macro"],
        outcome.headline["cc_mean"],
        outcome.headline["center_prior_cc_mean"],
        "passed" if floors.approved else "failed",
    )
    return outcome


def publish_evaluation(
    outcome: EvaluationOutcome, metrics: Metrics, classification: ClassificationMetrics
) -> None:
    """KFP metrics of the evaluation: scalars, confusion matrix, and the micro-average ROC
    (every class one-vs-rest, pooled), thinned to at most 200 points for the UI."""
    for key, value in outcome.headline.items():
        metrics.log_metric(key, float(value))
    cls = outcome.summary["classification"]
    classification.log_confusion_matrix(list(cls["class_names"]), cls["confusion_matrix"])
    n_classes = outcome.probs.shape[1]
    positives = outcome.labels[:, None] == np.arange(n_classes)[None, :]
    fpr, tpr, thresholds = roc_curve(outcome.probs.ravel(), positives.ravel())
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(200, len(fpr))).astype(int))
    finite = np.where(np.isfinite(thresholds[keep]), thresholds[keep], 1.0)
    classification.log_roc_curve(fpr[keep].tolist(), tpr[keep].tolist(), finite.tolist())


@step_component
def evaluate(
    preset: str,
    overrides: list,
    store: Input[Dataset],
    maps: Input[Dataset],
    model: Input[Model],
    promotion_policy: dict,
    tracking_uri: str,
    parent_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
    summary: Output[Artifact],
) -> NamedTuple("EvaluateOutputs", [("passed_floors", bool), ("floor_reasons", str)]):
    """Test-split metrics, center-prior comparison, floor checks and the HTML report."""
    from components.evaluate import evaluate_step, publish_evaluation

    outcome = evaluate_step(
        preset,
        overrides,
        store.path,
        maps.path,
        model.path,
        promotion_policy,
        summary.path,
        report.path,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    publish_evaluation(outcome, metrics, classification)
    return (outcome.floors.approved, "\n".join(outcome.floors.reasons))
