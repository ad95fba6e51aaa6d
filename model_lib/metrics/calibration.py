"""Calibration of class probabilities: reliability bins and the expected calibration error.

Top-label calibration (Guo et al., "On calibration of modern neural networks", ICML 2017): each
image's confidence is its highest class probability, and it counts as correct when that class is
its label. Confidences fall into equal-width bins of [0, 1], right-closed ((m-1)/M, m/M], with a
confidence of exactly 0 in the first bin. ECE is the count-weighted mean gap
sum_m (n_m / N) |accuracy_m - confidence_m|.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from model_lib.metrics._arrays import to_labels, to_numpy


@dataclass(frozen=True)
class Reliability:
    """Reliability bins of one set of predictions.

    ``edges`` (M + 1,) the bin boundaries; ``confidence`` and ``accuracy`` (M,) the mean
    confidence and the share of correct predictions per bin (NaN for an empty bin); ``counts``
    (M,) int64 images per bin; ``ece`` the expected calibration error; ``mce`` the largest gap of
    a non-empty bin.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray
    ece: float
    mce: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (empty bins as None)."""

        def values(a: np.ndarray) -> list[float | None]:
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "edges": self.edges.tolist(),
            "confidence": values(self.confidence),
            "accuracy": values(self.accuracy),
            "counts": self.counts.tolist(),
            "ece": self.ece,
            "mce": self.mce,
        }


def reliability(probs: Any, labels: Any, n_bins: int = 10) -> Reliability:
    """Reliability bins of class probabilities ``probs`` (N, C) against ``labels`` (N,).

    The predicted class is the argmax (the first class on a tie), as in
    :func:`~model_lib.metrics.predictions`.

    Raises:
        ValueError: ``n_bins`` < 1, no image, shapes that do not match, probabilities outside
            [0, 1], or labels outside [0, C).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    p = to_numpy(probs, "probs")
    y = to_labels(labels)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N, C) with N >= 1 and C >= 2, got {p.shape}")
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels: expected shape ({p.shape[0]},) to match probs, got {y.shape}")
    outside = np.flatnonzero(((p < 0) | (p > 1)).any(axis=1))
    if outside.size:
        raise ValueError(f"probs: values outside [0, 1] in row(s) {outside[:10].tolist()}")
    bad = np.flatnonzero((y < 0) | (y >= p.shape[1]))
    if bad.size:
        raise ValueError(
            f"labels: values outside [0, {p.shape[1]}) at index(es) {bad[:10].tolist()}"
        )

    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # Right-closed bins: ceil(c * M) - 1, with c = 0 joining the first bin.
    which = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins)
    filled = counts > 0
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    mean_conf = np.divide(conf_sum, counts, out=np.full(n_bins, np.nan), where=filled)
    mean_acc = np.divide(acc_sum, counts, out=np.full(n_bins, np.nan), where=filled)
    gaps = np.abs(mean_acc[filled] - mean_conf[filled])
    return Reliability(
        edges=np.linspace(0.0, 1.0, n_bins + 1),
        confidence=mean_conf,
        accuracy=mean_acc,
        counts=counts.astype(np.int64),
        ece=float(np.sum(counts[filled] / len(y) * gaps)),
        mce=float(gaps.max()),
    )


def expected_calibration_error(probs: Any, labels: Any, n_bins: int = 10) -> float:
    """ECE of ``probs`` (N, C) against ``labels`` (N,) over ``n_bins`` equal-width bins."""
    return reliability(probs, labels, n_bins).ece
