"""Inference over a loader: predictions for evaluation; a stage's validation loss and metrics."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from model_lib.metrics import accuracy, cc, macro_auc, micro_auc
from model_lib.training.precision import PrecisionName, PrecisionPlan, resolve_precision
from model_lib.training.stages import SALIENCY_LOSSES, StageSpec, stage_loss, stage_outputs

Batches = Iterable[dict[str, Tensor]]


def _plan(precision: PrecisionName | PrecisionPlan, device: torch.device | str) -> PrecisionPlan:
    if isinstance(precision, PrecisionPlan):
        return precision
    return resolve_precision(precision, device)


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Batches,
    device: torch.device | str = "cpu",
    *,
    precision: PrecisionName | PrecisionPlan = "fp32",
) -> dict[str, np.ndarray]:
    """Run ``model`` (moved to ``device``, put in eval mode) over every batch of ``loader``.

    Returns:
        In loader order: ``probs`` (N, C) float32 softmax of ``logits``; ``saliency`` (N, H, W)
        float32 maps, each summing to 1; ``labels`` (N,) int64; ``indices`` (N,) int64, the
        rows of the split.
    """
    plan = _plan(precision, device)
    plan.place(model).eval()
    probs, maps, labels, indices = [], [], [], []
    for batch in loader:
        with plan.autocast():
            out = model(plan.images(batch["image"]))
        probs.append(out["logits"].float().softmax(dim=1).cpu())
        maps.append(out["saliency"].float().exp()[:, 0].cpu())
        labels.append(batch["label"])
        indices.append(batch["index"])
    if not probs:
        raise ValueError("predict: the loader yielded no batch")
    return {
        "probs": torch.cat(probs).numpy(),
        "saliency": torch.cat(maps).numpy(),
        "labels": torch.cat(labels).numpy().astype(np.int64),
        "indices": torch.cat(indices).numpy().astype(np.int64),
    }


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``val_accuracy``, ``val_auc_macro``, ``val_auc_micro`` of probabilities (N, C).

    The AUCs are NaN when a class is missing from ``labels`` (a one-vs-rest AUC needs both
    sides), all three when the probabilities are not finite (a diverged model).
    """
    nan = float("nan")
    if not np.isfinite(probs).all():
        return {"val_accuracy": nan, "val_auc_macro": nan, "val_auc_micro": nan}
    every_class = np.unique(labels).size == probs.shape[1]
    return {
        "val_accuracy": accuracy(probs, labels),
        "val_auc_macro": macro_auc(probs, labels) if every_class else nan,
        "val_auc_micro": micro_auc(probs, labels) if every_class else nan,
    }


@torch.no_grad()
def stage_val_loss(
    model: nn.Module,
    spec: StageSpec,
    loader: Batches,
    *,
    device: torch.device | str = "cpu",
    stage_module: nn.Module | None = None,
    precision: PrecisionName | PrecisionPlan = "fp32",
) -> dict[str, float]:
    """A stage's validation loss and metrics, the model (already on ``device``) in eval mode.

    Returns:
        ``val_loss``: the stage loss, mean over images (each batch's loss weighted by its size);
        with a reported head, :func:`classification_metrics`; for the saliency losses
        ``val_cc``, the mean per-image Pearson CC of the predicted and target maps; for the
        joint loss the learnt ``sigma_c`` and ``sigma_s``.
    """
    plan = _plan(precision, device)
    model.eval()
    if stage_module is not None:
        stage_module.eval()
    head = spec.report_head
    total = torch.zeros((), dtype=torch.float64, device=plan.device)
    count = 0
    probs, labels, ccs = [], [], []
    for batch in loader:
        targets = {k: batch[k].to(plan.device) for k in ("label", "saliency")}
        with plan.autocast():
            out = stage_outputs(model, spec, plan.images(batch["image"]))
            loss = stage_loss(spec, out, targets, stage_module)
        total += loss.double() * len(batch["label"])
        count += len(batch["label"])
        if head is not None:
            probs.append(out[f"{head}_logits"].float().softmax(dim=1).cpu())
            labels.append(batch["label"])
        if spec.loss in SALIENCY_LOSSES:
            pred = out["saliency"].float().exp().cpu()
            ccs.append(cc(pred, batch["saliency"]) if torch.isfinite(pred).all() else [np.nan])
    if count == 0:
        raise ValueError(f"stage {spec.name}: the validation loader yielded no batch")
    metrics = {"val_loss": float(total) / count}
    if head is not None:
        metrics.update(classification_metrics(torch.cat(probs).numpy(), torch.cat(labels).numpy()))
    if ccs:
        metrics["val_cc"] = float(np.mean(np.concatenate(ccs)))
    if spec.loss == "joint":
        metrics.update(stage_module.sigmas)
    return metrics
