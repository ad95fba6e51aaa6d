"""Saliency metrics, per image, following the MIT saliency benchmark's reference code.

Conventions are those of Bylinskii et al., "What do different evaluation metrics tell us about
saliency models?" (TPAMI 2019) and the benchmark's MATLAB functions (KLdiv.m, CC.m, similarity.m,
NSS.m, AUC_Judd.m). Every metric takes a batch of maps (B, H, W) (a (B, 1, H, W) batch is accepted
and its channel dropped; numpy arrays or torch tensors) and returns a float64 array (B,) with one
value per image. Maps must be the same size: resizing is the caller's business. Computation is in
float64.

Distribution metrics (KLD, CC, SIM) compare a predicted map with a ground-truth map; location
metrics (NSS, AUC-Judd) compare it with a fixation map, in which a pixel counts as fixated when its
value is > 0 (binary maps and count maps both work; multiplicity is ignored, as in the benchmark).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from model_lib.metrics._arrays import to_numpy

MATLAB_EPS = float(np.finfo(np.float64).eps)
"""2.2204e-16, the ``eps`` the benchmark's MATLAB code regularises KLD with."""


def _maps(x: Any, name: str) -> np.ndarray:
    """(B, H, W) or (B, 1, H, W) -> (B, H, W) float64."""
    arr = to_numpy(x, name)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected maps (B, H, W) or (B, 1, H, W), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] * arr.shape[2] < 2:
        raise ValueError(f"{name}: expected at least one map of at least 2 pixels, got {arr.shape}")
    return arr


def _pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """Two batches of maps of one shape (B, H, W), flattened to (B, H*W)."""
    x, y = _maps(a, names[0]), _maps(b, names[1])
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]}: shapes differ ({x.shape} vs {y.shape})")
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def _varies(m: np.ndarray) -> np.ndarray:
    """(B, 1) bool: the row is not constant, decided exactly on the values (max > min) rather
    than on a computed standard deviation, which carries round-off."""
    return (m.max(axis=1) > m.min(axis=1))[:, None]


def _check_non_negative(m: np.ndarray, name: str) -> None:
    bad = np.flatnonzero((m < 0).any(axis=1))
    if bad.size:
        raise ValueError(f"{name}: negative values in image(s) {bad.tolist()}")


def _sum_normalised(m: np.ndarray, name: str) -> np.ndarray:
    """Each row divided by its sum; rows must be non-negative with a positive sum."""
    _check_non_negative(m, name)
    sums = m.sum(axis=1, keepdims=True)
    empty = np.flatnonzero(sums[:, 0] <= 0)
    if empty.size:
        raise ValueError(f"{name}: all-zero map in image(s) {empty.tolist()}")
    return m / sums


def _standardised(m: np.ndarray) -> np.ndarray:
    """Each row to mean 0, std 1 (ddof=1, MATLAB's std). A constant row becomes all zeros."""
    centred = m - m.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, ddof=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=_varies(m))


def _pred_and_fixated(pred: Any, fixations: Any) -> tuple[np.ndarray, np.ndarray]:
    """Predicted maps (B, H*W) and the boolean mask of fixated pixels (B, H*W).

    Each image needs at least one fixated pixel.
    """
    p, fix = _pair(pred, fixations, ("pred", "fixations"))
    _check_non_negative(fix, "fixations")
    mask = fix > 0
    none = np.flatnonzero(~mask.any(axis=1))
    if none.size:
        raise ValueError(f"fixations: no fixated pixel in image(s) {none.tolist()}")
    return p, mask


def kld(pred: Any, gt: Any, eps: float = MATLAB_EPS) -> np.ndarray:
    """Kullback-Leibler divergence KL(gt || pred) per image; lower is better, 0 for a match.

    Both maps are divided by their sums, then ``sum gt * log(eps + gt / (pred + eps))``. ``eps``
    (default 2.2204e-16, the benchmark's) keeps pixels where ``pred`` is 0 finite: they cost
    ``gt * log(gt / eps)`` (about 36 nats per unit of ground-truth mass) instead of infinity.

    Args:
        pred: (B, H, W) non-negative predicted maps.
        gt: (B, H, W) non-negative ground-truth maps.

    Returns:
        (B,) float64.
    """
    p, g = _pair(pred, gt, ("pred", "gt"))
    p, g = _sum_normalised(p, "pred"), _sum_normalised(g, "gt")
    # In place on the normalised copy of pred: a test set is ~20 M pixels per temporary.
    ratio = np.add(p, eps, out=p)
    np.divide(g, ratio, out=ratio)
    ratio += eps
    np.log(ratio, out=ratio)
    return (g * ratio).sum(axis=1)


def cc(pred: Any, gt: Any) -> np.ndarray:
    """Pearson linear correlation coefficient per image, in [-1, 1]; higher is better.

    Invariant to shifting or positively scaling either map. A constant map has no correlation
    with anything and scores 0 (the formula would divide by zero).

    Args:
        pred: (B, H, W) predicted maps.
        gt: (B, H, W) ground-truth maps.

    Returns:
        (B,) float64.
    """
    p, g = _pair(pred, gt, ("pred", "gt"))
    both_vary = (_varies(p) & _varies(g))[:, 0]
    p = p - p.mean(axis=1, keepdims=True)
    g = g - g.mean(axis=1, keepdims=True)
    denominator = np.sqrt((p * p).sum(axis=1) * (g * g).sum(axis=1))
    numerator = (p * g).sum(axis=1)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=both_vary)


def sim(pred: Any, gt: Any) -> np.ndarray:
    """Similarity (histogram intersection) per image, in [0, 1]; 1 for identical distributions.

    Both maps are divided by their sums; the score is the sum of the pixelwise minima.

    Args:
        pred: (B, H, W) non-negative predicted maps.
        gt: (B, H, W) non-negative ground-truth maps.

    Returns:
        (B,) float64.
    """
    p, g = _pair(pred, gt, ("pred", "gt"))
    return np.minimum(_sum_normalised(p, "pred"), _sum_normalised(g, "gt")).sum(axis=1)


def nss(pred: Any, fixations: Any) -> np.ndarray:
    """Normalised scanpath saliency per image; 0 is chance, higher is better.

    ``pred`` is standardised per image (mean 0, std 1 with ddof=1 as the benchmark's MATLAB code;
    a constant map becomes all zeros) and averaged over the fixated pixels (value > 0).

    Args:
        pred: (B, H, W) predicted maps.
        fixations: (B, H, W) binary or count fixation maps, at least one fixation per image.

    Returns:
        (B,) float64.
    """
    p, mask = _pred_and_fixated(pred, fixations)
    return (_standardised(p) * mask).sum(axis=1) / mask.sum(axis=1)


def _auc_judd_one(s: np.ndarray, fixated: np.ndarray) -> float:
    on = np.sort(s[fixated])
    off = np.sort(s[~fixated])
    thresholds = np.unique(on)[::-1]
    # Fraction of each set at or above each threshold, by binary search in the sorted values.
    tp = (on.size - np.searchsorted(on, thresholds, side="left")) / on.size
    fp = (off.size - np.searchsorted(off, thresholds, side="left")) / off.size
    tp = np.concatenate([[0.0], tp, [1.0]])
    fp = np.concatenate([[0.0], fp, [1.0]])
    return float((np.diff(fp) * (tp[1:] + tp[:-1])).sum() / 2.0)


def auc_judd(pred: Any, fixations: Any) -> np.ndarray:
    """AUC-Judd per image: area under the ROC of fixated vs non-fixated pixels; 0.5 is chance.

    The thresholds are the distinct saliency values at fixated pixels. At threshold ``t`` the true
    positive rate is the fraction of fixated pixels with saliency >= t and the false positive rate
    the fraction of non-fixated pixels with saliency >= t; with the end points (0, 0) and (1, 1)
    added, the area is the trapezoid rule. Ties are counted exactly (all pixels at a value enter
    together) where the benchmark code jitters the map to break them; without ties both agree.

    Args:
        pred: (B, H, W) predicted maps.
        fixations: (B, H, W) binary or count fixation maps, at least one fixated and one
            non-fixated pixel per image.

    Returns:
        (B,) float64.
    """
    p, mask = _pred_and_fixated(pred, fixations)
    full = np.flatnonzero(mask.all(axis=1))
    if full.size:
        raise ValueError(f"fixations: every pixel is fixated in image(s) {full.tolist()}")
    return np.array([_auc_judd_one(s, m) for s, m in zip(p, mask, strict=True)])


def saliency_summary(values: Any) -> dict[str, float]:
    """``{"mean", "median", "std"}`` of per-image values (N,), as plain floats.

    ``std`` is the population standard deviation (ddof=0, numpy's default).
    """
    v = to_numpy(values, "values")
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty (N,) array, got shape {v.shape}")
    return {"mean": float(v.mean()), "median": float(np.median(v)), "std": float(v.std())}
