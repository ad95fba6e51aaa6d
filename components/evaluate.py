"""Evaluate step: score the trained model on the evaluation split (test; ``val`` for the
authors' choice, ``evaluation_split``), next to its baselines (center
prior, Grad-CAM, MT-UNet when one is given), check the promotion floors, and write the report.

Outputs: the summary (JSON), the self-contained HTML report (:mod:`components.report`), KFP
metrics (scalars, confusion matrix, ROC) and a nested MLflow run ``evaluate`` with the same
numbers and files (``evaluation/report.html``). ``passed_floors`` gates the
promotion in the DAG; the champion comparison happens in the promote step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import torch
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from torch import nn

from components.data_transfer import POINTER_FILE, materialize
from components.kfp_step import step_component
from components.promote import Decision, decide, policy_from_mapping
from components.register import flatten_metrics
from components.registry import registry_client
from components.report import ReportContent, StageCurves, evaluation_html
from components.scores import Scores
from components.tracking import SKIPPED_TAG, STEP_TAG, resolve_tracking_uri, step_run
from model_lib.config import ModelConfig
from model_lib.data.fingerprint import tree_digest
from model_lib.metrics import reliability, roc_curve, saliency_summary
from model_lib.models import build_model
from model_lib.presets import ExperimentConfig, get_preset
from model_lib.training import evaluate_experiment, load_model_weights
from model_lib.training.evaluate import compare_saliency

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


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _data_md5(artifact: Path) -> str:
    """md5 of a data folder: its pointer's when it was passed by URI, else computed."""
    pointer = artifact / POINTER_FILE
    if pointer.is_file():
        return json.loads(pointer.read_text(encoding="utf-8"))["md5"]
    return tree_digest(artifact)


def stage_curves(client: MlflowClient, parent_run_id: str, stages: list[str]) -> list[StageCurves]:
    """The training stages' histories, from the nested runs the train steps logged under the
    pipeline's parent run (their ``<stage>_history.json`` artifact), in ``stages`` order."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )
    by_stage = {r.data.tags.get(STEP_TAG): r for r in runs}
    curves = []
    for stage in stages:
        run = by_stage.get(stage)
        if run is None:
            continue
        if skipped := run.data.tags.get(SKIPPED_TAG):
            curves.append(StageCurves(stage, [], note=skipped))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = client.download_artifacts(run.info.run_id, f"{stage}_history.json", tmp)
            except MlflowException:
                note = f"run {run.info.run_id} has no {stage}_history.json"
                curves.append(StageCurves(stage, [], note=note))
                continue
            history = json.loads(Path(local).read_text(encoding="utf-8"))
        best = run.data.metrics.get(f"{stage}/best_epoch")
        best_epoch = None if best is None else int(best)
        curves.append(StageCurves(stage, history, best_epoch, f"MLflow run {run.info.run_id}"))
    return curves


def lineage_rows(
    client: MlflowClient,
    parent_run_id: str,
    cfg: ExperimentConfig,
    inputs: Mapping[str, Path],
    weights: Path,
) -> list[tuple[str, str, str]]:
    """(group, what, value) rows: the parent run's lineage tags and parameters, the md5 of the
    data folders the step read, and what identifies the weights."""
    parent = client.get_run(parent_run_id)
    tags = {k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")}
    tags.pop(STEP_TAG, None)
    rows = [("pipeline", "MLflow run", parent_run_id)]
    rows += [("pipeline", f"tag {k}", v) for k, v in sorted(tags.items())]
    rows += [("pipeline", f"param {k}", v) for k, v in sorted(parent.data.params.items())]
    rows += [("data", f"{name} md5", _data_md5(path)) for name, path in inputs.items()]
    m = cfg.model
    rows += [
        ("model", "weights sha256", _sha256(weights)),
        ("model", "network", f"{m.arch} ({m.backbone}, width {m.width}, input {m.input_hw})"),
        ("model", "class head", m.classifier),
        ("model", "stages", ", ".join(s.name for s in cfg.enabled_stages)),
    ]
    return rows


def _key(name: str) -> str:
    """A display name as a metric key: ``Grad-CAM`` -> ``grad_cam``."""
    return name.lower().replace("-", "_").replace(" ", "_")


def _mtunet(cfg: ExperimentConfig, weights: Path) -> nn.Module:
    """The MT-UNet baseline at the experiment's size, with trained weights."""
    fields = {
        **cfg.model.model_dump(),
        "arch": "mt_unet",
        "classifier": "fusion",
        "pretrained_weights": None,
    }
    model = build_model(ModelConfig.model_validate(fields))
    load_model_weights(model, Path(weights))
    return model


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
    mtunet_weights: Path | None = None,
) -> EvaluationOutcome:
    """Evaluate the weights on the preset's evaluation split (metrics logged as ``<split>/...``)
    next to the baselines (center prior, Grad-CAM of
    the model's DenseNet classifier, MT-UNet when ``mtunet_weights`` are given); write the
    summary (JSON) and the report (HTML) and log both, with the metrics, to the nested run
    ``evaluate``. The report's training curves and lineage come from the parent run."""
    cfg = get_preset(preset, overrides)
    rules = policy_from_mapping(policy, "promotion_policy")
    model = build_model(cfg.model, pretrained=False)  # the trained weights replace them all
    load_model_weights(model, Path(weights))
    mtunet = None if mtunet_weights is None else _mtunet(cfg, Path(mtunet_weights))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    local_store, local_maps = materialize(Path(store)), materialize(Path(maps))
    result = evaluate_experiment(model, cfg, local_store, local_maps, device=device)
    comparison = compare_saliency(
        model, cfg, local_store, local_maps, result, mtunet=mtunet, device=device
    )
    calibration = reliability(result.probs, result.labels)
    summary = result.to_dict()
    summary["calibration"] = {
        "ece": calibration.ece,
        "mce": calibration.mce,
        "n_bins": len(calibration.counts),
    }
    summary["baselines"] = {
        _key(name): {metric: saliency_summary(v) for metric, v in scores.items()}
        for name, scores in comparison.scores.items()
        if name not in ("model", "center prior")  # both already in the summary
    }
    scores = Scores(probabilities=result.probs, labels=result.labels, cc=result.saliency["cc"])
    floors = decide(rules, scores, None)
    uri = resolve_tracking_uri(tracking_uri)
    client = registry_client(uri)
    content = ReportContent(
        title=f"cxr-gaze evaluation: preset {preset}",
        summary=summary,
        probs=result.probs,
        labels=result.labels,
        gate_reasons=floors.reasons,
        calibration=calibration,
        saliency=comparison,
        stages=stage_curves(client, parent_run_id, [s.name for s in cfg.stages]),
        lineage=lineage_rows(
            client, parent_run_id, cfg, {"store": Path(store), "maps": Path(maps)}, Path(weights)
        ),
    )
    page = evaluation_html(content)
    summary_text = json.dumps(summary, indent=2) + "\n"
    _write_atomic(Path(summary_path), summary_text)
    _write_atomic(Path(report_path), page)
    outcome = EvaluationOutcome(summary, floors, result.probs, result.labels)
    with step_run(uri, parent_run_id, "evaluate"):
        split = result.split
        mlflow.log_metrics({f"{split}/{k}": v for k, v in flatten_metrics(summary).items()})
        mlflow.log_metrics({f"{split}/{k}": v for k, v in outcome.headline.items()})
        mlflow.set_tag("passed_floors", str(floors.approved).lower())
        mlflow.log_text(summary_text, "evaluation/evaluation.json")
        mlflow.log_text(page, "evaluation/report.html")
    logger.info(
        "%s: macro AUC %.3f, mean CC %.3f (center prior %.3f), ECE %.3f; floors %s; "
        "report %s (%d kB)",
        result.split,
        outcome.headline["auc_macro"],
        outcome.headline["cc_mean"],
        outcome.headline["center_prior_cc_mean"],
        calibration.ece,
        "passed" if floors.approved else "failed",
        report_path,
        len(page) // 1024,
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
    """Evaluation-split metrics, center-prior comparison, floor checks and the HTML report."""
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
