"""The plots of the evaluation report, each returned as an ``<img>`` with its PNG inline.

Figures are made with matplotlib's object API (``Figure``, no pyplot): no global state, nothing
to close, safe in any thread. Everything is drawn small (dpi 80) so the page stays light.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from model_lib.metrics import Reliability, roc_auc, roc_curve
from model_lib.training.evaluate import GalleryCase

DPI = 80
SALIENCY_LABELS = {
    "kld": "KLD (lower is better)",
    "cc": "CC",
    "sim": "SIM",
    "nss": "NSS",
    "auc_judd": "AUC-Judd",
}
_LOSS_KEYS = ("train_loss", "val_loss")
_SCORE_KEYS = ("val_auc_macro", "val_accuracy", "val_cc")


@dataclass(frozen=True)
class StageCurves:
    """One training stage as the report shows it: per-epoch metrics (``history[e]`` is epoch
    e's), the best epoch, and a note (why a stage has no curves, or where they came from)."""

    stage: str
    history: Sequence[Mapping[str, float]]
    best_epoch: int | None = None
    note: str = ""


def img(fig: Figure, alt: str) -> str:
    """The figure as an ``<img>`` with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def roc_plot(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> str:
    """One-vs-rest ROC curve of every class (its AUC in the legend); the diagonal is chance."""
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.subplots()
    for c, name in enumerate(class_names):
        positives = labels == c
        if positives.all() or not positives.any():
            continue  # a class with no positive or no negative image has no ROC
        fpr, tpr, _ = roc_curve(probs[:, c], positives)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(probs[:, c], positives):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one vs rest")
    ax.legend(loc="lower right", fontsize="small")
    return img(fig, "ROC curves per class")


def confusion_plot(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> str:
    """Counts per (true, predicted) class; the colour is the share of the true class's row."""
    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    fig = Figure(figsize=(3.8, 3.4), layout="constrained")
    ax = fig.subplots()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        colour = "white" if share[i, j] > 0.6 else "black"
        ax.text(j, i, str(n), ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    return img(fig, "confusion matrix")


def calibration_plot(rel: Reliability) -> str:
    """Reliability diagram (accuracy against mean confidence per bin, the diagonal is perfect
    calibration) over the histogram of confidences."""
    fig = Figure(figsize=(4.2, 5.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    width = np.diff(rel.edges)
    centres = rel.edges[:-1] + width / 2
    filled = rel.counts > 0
    top.bar(
        centres[filled],
        rel.accuracy[filled],
        width=width[filled] * 0.9,
        label="accuracy",
        color="#4c72b0",
        edgecolor="black",
        linewidth=0.5,
    )
    top.plot(
        rel.confidence[filled],
        rel.accuracy[filled],
        "o",
        color="#dd8452",
        label="mean confidence of the bin",
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    top.set(
        ylabel="accuracy",
        ylim=(0, 1),
        xlim=(0, 1),
        title=f"reliability (ECE {rel.ece:.3f}, MCE {rel.mce:.3f})",
    )
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, rel.counts, width=width * 0.9, color="grey")
    bottom.set(xlabel="confidence (highest class probability)", ylabel="images")
    return img(fig, "calibration: reliability diagram")


def distributions_plot(scores: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """Per-image saliency metrics: one box plot per metric, a box per model or baseline, the
    images as dots."""
    metrics = [m for m in SALIENCY_LABELS if all(m in s for s in scores.values())]
    names = list(scores)
    fig = Figure(figsize=(2.3 * len(metrics), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    jitter = np.random.default_rng(0)  # fixed: the same data draw the same page
    for ax, metric in zip(axes, metrics, strict=True):
        values = [np.asarray(scores[name][metric], dtype=np.float64) for name in names]
        ax.boxplot(values, showfliers=False)
        for i, v in enumerate(values, start=1):
            ax.plot(
                i + jitter.uniform(-0.15, 0.15, v.size),
                v,
                ".",
                color="black",
                alpha=0.35,
                markersize=3,
            )
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
        ax.set_title(SALIENCY_LABELS[metric])
    return img(fig, "saliency metric distributions")


def gallery_plot(cases: Sequence[GalleryCase], class_names: Sequence[str], group: str) -> str:
    """One row per case: the image, the ground-truth gaze map and the predicted map over it
    (each map in its own colour scale), CC and the classes in the titles."""
    fig = Figure(figsize=(6.0, 2.0 * len(cases)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(cases), 3))
    for row, case in zip(axes, cases, strict=True):
        true, said = class_names[case.label], class_names[case.predicted]
        row[0].imshow(case.image, cmap="gray", vmin=0, vmax=1)
        row[0].set_title(f"{case.dicom_id[:16]}\ntrue {true}, predicted {said}", fontsize=8)
        for ax, gaze, title in (
            (row[1], case.truth, "ground-truth gaze"),
            (row[2], case.prediction, f"predicted, CC {case.cc:.3f}"),
        ):
            ax.imshow(case.image, cmap="gray", vmin=0, vmax=1)
            ax.imshow(gaze, cmap="inferno", alpha=0.6, vmin=0, vmax=float(gaze.max()) or 1.0)
            ax.set_title(title, fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return img(fig, f"gallery: {group} CC")


def training_plot(stages: Sequence[StageCurves]) -> str:
    """One row per stage with curves: losses per epoch (left) and the validation scores the
    stage reports (right); the dotted line is the epoch whose weights were kept."""
    drawn = [s for s in stages if s.history]
    fig = Figure(figsize=(7.0, 2.4 * len(drawn)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(drawn), 2))
    for (loss_ax, score_ax), curves in zip(axes, drawn, strict=True):
        epochs = np.arange(len(curves.history))
        for ax, keys in ((loss_ax, _LOSS_KEYS), (score_ax, _SCORE_KEYS)):
            shown = [k for k in keys if any(k in h for h in curves.history)]
            for key in shown:
                values = [h.get(key, np.nan) for h in curves.history]
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
            if curves.best_epoch is not None:
                ax.axvline(curves.best_epoch, color="grey", linestyle=":")
            if shown:
                ax.legend(fontsize="x-small")
            else:
                ax.text(0.5, 0.5, "no validation score", ha="center", transform=ax.transAxes)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        loss_ax.set_title(f"stage {curves.stage}: loss", fontsize=9)
        score_ax.set_title(f"stage {curves.stage}: validation scores", fontsize=9)
    return img(fig, "training curves per stage")
