"""Inference over a loader: predictions for evaluation; a stage's validation loss and metrics;
the baselines' per-image saliency scores and the gallery cases of the evaluation report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from model_lib.data.loader import BatchLoader, open_split
from model_lib.data.store import IMAGE_SCALE
from model_lib.metrics import accuracy, cc, macro_auc, micro_auc, paired_t_test
from model_lib.models import DualEncoderUNet, densenet_grad_cam
from model_lib.training.precision import PrecisionName, PrecisionPlan, resolve_precision
from model_lib.training.stages import SALIENCY_LOSSES, StageSpec, stage_loss, stage_outputs

if TYPE_CHECKING:
    from model_lib.presets import ExperimentConfig
    from model_lib.training.experiment import EvaluationResult

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


GALLERY_GROUPS: tuple[str, ...] = ("best", "median", "worst")


def select_gallery(scores: np.ndarray, per_group: int = 3) -> dict[str, np.ndarray]:
    """Rows to show for the highest, middle and lowest per-image ``scores`` (N,).

    Each group holds ``k = min(per_group, N // 3)`` rows (at least 1), disjoint when N >= 3:
    ``best`` the k highest scores, highest first; ``median`` the k rows ranked around the
    median, in rank order; ``worst`` the k lowest, lowest first. Equal scores rank by row, the
    lower row higher.

    Raises:
        ValueError: ``per_group`` < 1, or ``scores`` is not a non-empty finite (N,) array.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores: expected a non-empty (N,) array, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores)).tolist()
        raise ValueError(f"scores: NaN or inf at row(s) {bad}")
    n = scores.size
    k = max(1, min(per_group, n // 3))
    ranked = np.lexsort((np.arange(n), -scores))  # highest first
    middle = (n - k) // 2
    return {
        "best": ranked[:k],
        "median": ranked[middle : middle + k],
        "worst": ranked[::-1][:k],
    }


def _pooled(a: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) -> the mean of each ``factor`` x ``factor`` block (edges that do not fill a block
    are dropped), float64."""
    a = np.asarray(a, dtype=np.float64)
    if factor <= 1:
        return a
    h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
    return a[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _pooled_map(m: np.ndarray, factor: int) -> np.ndarray:
    """A gaze map block-averaged and normalised to sum 1, float32."""
    pooled = _pooled(m, factor)
    return (pooled / pooled.sum()).astype(np.float32)


@dataclass(frozen=True)
class GalleryCase:
    """One test image for the report, block-averaged to at most ``max_side`` pixels a side.

    ``image`` (h, w) float32 in [0, 1]; ``truth`` and ``prediction`` (h, w) float32 gaze maps,
    each summing to 1; ``cc`` the per-image CC at full resolution; ``row`` its row in the split.
    """

    group: str
    row: int
    dicom_id: str
    label: int
    predicted: int
    cc: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray


@dataclass(frozen=True)
class SaliencyComparison:
    """What the report shows beyond the summary.

    ``scores``: per-image saliency metrics, ``name -> metric -> (N,)``, the model first, then
    each baseline that could run; ``cc_tests``: per baseline, the paired t-test of per-image CC,
    model minus baseline (``mean_difference``, ``t``, ``p_value``); ``skipped``: baseline ->
    why it was left out; ``gallery``: the cases of :func:`select_gallery` on the model's CC.
    """

    scores: dict[str, dict[str, np.ndarray]]
    cc_tests: dict[str, dict[str, float]]
    skipped: dict[str, str]
    gallery: tuple[GalleryCase, ...]


def compare_saliency(
    model: nn.Module,
    cfg: ExperimentConfig,
    store_dir: Path,
    maps_dir: Path,
    evaluation: EvaluationResult,
    *,
    mtunet: nn.Module | None = None,
    device: torch.device | str = "cpu",
    per_group: int = 3,
    max_side: int = 128,
    batch_size: int = 32,
) -> SaliencyComparison:
    """Per-image saliency metrics of the model and its baselines on the split ``evaluation``
    scored, and the gallery of its best, median and worst CC.

    Baselines: the center prior (already in ``evaluation``); Grad-CAM of the model's DenseNet
    classifier (:func:`~model_lib.models.densenet_grad_cam`, skipped for an architecture
    without DenseNet); MT-UNet when ``mtunet`` (a trained network) is given. All are scored
    against the same ground truth and fixation maps as the model.

    Raises:
        ValueError: ``evaluation`` was not made on this store's split, in its order.
    """
    # experiment.py imports this module (predict), so its helpers come in at call time.
    from model_lib.training.experiment import fixation_maps, saliency_scores

    data = open_split(Path(store_dir), Path(maps_dir), evaluation.split)
    if tuple(data.dicom_ids) != tuple(evaluation.dicom_ids):
        raise ValueError(
            f"the evaluation's images are not the {evaluation.split} split of {store_dir}"
        )
    loader = BatchLoader(data, batch_size)
    gt = np.asarray(data.maps, dtype=np.float64)
    fixations = fixation_maps(Path(store_dir), evaluation.split, cfg.data.heatmap.source)
    scores = {"model": evaluation.saliency, "center prior": evaluation.center_prior}
    skipped: dict[str, str] = {}
    if isinstance(model, DualEncoderUNet):
        cams = predict(densenet_grad_cam(model), loader, device)
        scores["Grad-CAM"] = saliency_scores(cams["saliency"], gt, fixations)
    else:
        skipped["Grad-CAM"] = f"the {cfg.model.arch} network has no DenseNet classifier"
    if mtunet is not None:
        theirs = predict(mtunet, loader, device)
        scores["MT-UNet"] = saliency_scores(theirs["saliency"], gt, fixations)
    else:
        skipped["MT-UNet"] = "no trained MT-UNet was given"

    ours = evaluation.saliency["cc"]
    cc_tests = {}
    for name, theirs in list(scores.items())[1:]:
        t, p = paired_t_test(ours, theirs["cc"])
        difference = float(np.mean(ours - theirs["cc"]))
        cc_tests[name] = {"mean_difference": difference, "t": t, "p_value": p}

    groups = select_gallery(ours, per_group)
    rows = np.unique(np.concatenate(list(groups.values())))
    shown = predict(model, [loader.batch(rows)], device)
    maps = dict(zip(shown["indices"].tolist(), shown["saliency"], strict=True))
    factor = -(-max(data.images.shape[1:]) // max_side)
    cases = []
    for group, picked in groups.items():
        for row in picked.tolist():
            image = np.asarray(data.images[row], dtype=np.float64) / IMAGE_SCALE
            cases.append(
                GalleryCase(
                    group=group,
                    row=row,
                    dicom_id=data.dicom_ids[row],
                    label=int(evaluation.labels[row]),
                    predicted=int(evaluation.probs[row].argmax()),
                    cc=float(ours[row]),
                    image=_pooled(image, factor).astype(np.float32),
                    truth=_pooled_map(gt[row], factor),
                    prediction=_pooled_map(maps[row], factor),
                )
            )
    return SaliencyComparison(scores, cc_tests, skipped, tuple(cases))
