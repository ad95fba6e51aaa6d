"""Classification metrics from class probabilities (N, C) and integer labels (N,).

ROC-AUC is computed exactly as the Mann-Whitney statistic: the probability that a random positive
scores above a random negative, ties counting one half. The class prediction is the argmax of the
probabilities (the first class on a tie). Inputs may be numpy arrays or torch tensors; results
are numpy arrays or plain floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from model_lib.data.schema import CLASS_NAMES
from model_lib.metrics._arrays import to_labels, to_numpy

Average = Literal["macro", "micro"] | int
"""How to reduce one-vs-rest AUCs: their mean, the AUC of the flattened one-hot problem, or the
AUC of one class (its index)."""


def _probs_labels(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p = to_numpy(probs, "probs")
    y = to_labels(labels)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probs: expected shape (N, C) with C >= 2, got {p.shape}")
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"labels: expected shape ({p.shape[0]},) to match probs, got {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= p.shape[1]))
    if bad.size:
        raise ValueError(
            f"labels: values outside [0, {p.shape[1]}) at index(es) {bad[:10].tolist()}"
        )
    return p, y


def _binary(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray]:
    s = to_numpy(scores, "scores")
    pos = to_numpy(positives, "positives")
    if s.ndim != 1 or pos.shape != s.shape:
        raise ValueError(
            f"scores and positives: expected two (N,) arrays, got {s.shape}, {pos.shape}"
        )
    pos = pos != 0
    if pos.all() or not pos.any():
        raise ValueError("positives: ROC needs at least one positive and one negative")
    return s, pos


def _mann_whitney(scores: np.ndarray, positives: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC (K,) of ``scores`` (M,) vs boolean ``positives`` (M,) under item weights (K, M).

    A weight is how many times an item is counted (a bootstrap resample's multiplicity). After one
    sort, each positive gains the negative weight strictly below its score plus half the negative
    weight tied with it, read off a cumulative sum per tie group.
    """
    order = np.argsort(scores, kind="stable")
    s, pos, w = scores[order], positives[order], weights[:, order]
    new_group = np.concatenate([[True], s[1:] != s[:-1]])
    starts = np.flatnonzero(new_group)
    ends = np.concatenate([starts[1:], [s.size]])
    group = np.cumsum(new_group) - 1
    w_neg = np.where(pos, 0.0, w)
    w_pos = np.where(pos, w, 0.0)
    cum_neg = np.concatenate([np.zeros((w.shape[0], 1)), np.cumsum(w_neg, axis=1)], axis=1)
    below = cum_neg[:, starts[group]]
    tied = cum_neg[:, ends[group]] - below
    wins = (w_pos * (below + 0.5 * tied)).sum(axis=1)
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    if (pairs <= 0).any():
        raise ValueError("ROC-AUC needs at least one positive and one negative")
    return wins / pairs


def roc_auc(scores: Any, positives: Any) -> float:
    """Binary ROC-AUC of ``scores`` (N,) against ``positives`` (N,) (bool or 0/1)."""
    s, pos = _binary(scores, positives)
    return float(_mann_whitney(s, pos, np.ones((1, s.size)))[0])


def weighted_auc(probs: Any, labels: Any, weights: Any, average: Average = "macro") -> np.ndarray:
    """One-vs-rest AUC under image weights: one AUC per row of ``weights``.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels.
        weights: (K, N) non-negative multiplicity of each image (a row of ones is the plain AUC;
            a bootstrap resample's counts give the resample's AUC without copying data).
        average: "macro" (mean of the C one-vs-rest AUCs), "micro" (AUC of the flattened
            one-hot labels (N*C,) vs probabilities, each image's C entries sharing its weight),
            or a class index.

    Returns:
        (K,) float64.
    """
    p, y = _probs_labels(probs, labels)
    w = to_numpy(weights, "weights")
    if w.ndim != 2 or w.shape[1] != p.shape[0] or (w < 0).any():
        raise ValueError(f"weights: expected non-negative (K, {p.shape[0]}), got {w.shape}")
    n_classes = p.shape[1]
    if average == "micro":
        onehot = y[:, None] == np.arange(n_classes)
        return _mann_whitney(p.ravel(), onehot.ravel(), np.repeat(w, n_classes, axis=1))
    if average == "macro":
        return np.mean([_one_class(p, y, w, c) for c in range(n_classes)], axis=0)
    if isinstance(average, int | np.integer) and 0 <= average < n_classes:
        return _one_class(p, y, w, int(average))
    raise ValueError(f"average: expected 'macro', 'micro' or a class index, got {average!r}")


def _one_class(p: np.ndarray, y: np.ndarray, w: np.ndarray, c: int) -> np.ndarray:
    if not (y == c).any() or (y == c).all():
        raise ValueError(f"labels: class {c} needs positives and negatives for a one-vs-rest AUC")
    return _mann_whitney(p[:, c], y == c, w)


def per_class_auc(probs: Any, labels: Any) -> np.ndarray:
    """One-vs-rest ROC-AUC of each class (C,); every class must occur, and not alone."""
    p, y = _probs_labels(probs, labels)
    ones = np.ones((1, p.shape[0]))
    return np.array([_one_class(p, y, ones, c)[0] for c in range(p.shape[1])])


def micro_auc(probs: Any, labels: Any) -> float:
    """ROC-AUC of the flattened one-hot labels (N*C,) against the probabilities (N*C,)."""
    p, y = _probs_labels(probs, labels)
    return float(weighted_auc(p, y, np.ones((1, p.shape[0])), average="micro")[0])


def macro_auc(probs: Any, labels: Any) -> float:
    """Unweighted mean of the per-class one-vs-rest AUCs."""
    return float(per_class_auc(probs, labels).mean())


def roc_curve(scores: Any, positives: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a binary problem, one point per distinct score.

    Args:
        scores: (N,) scores, higher meaning more positive.
        positives: (N,) bool or 0/1.

    Returns:
        ``(fpr, tpr, thresholds)``, each (T + 1,) for T distinct scores: thresholds decreasing,
        starting with +inf (the (0, 0) point); point k counts the items with score >=
        ``thresholds[k]``. Collinear points are kept (scikit-learn's
        ``drop_intermediate=False``).
    """
    s, pos = _binary(scores, positives)
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    # The last item of each run of equal scores closes a point of the curve.
    last = np.concatenate([s[1:] != s[:-1], [True]])
    tps = np.cumsum(pos)[last]
    fps = np.cumsum(~pos)[last]
    tpr = np.concatenate([[0.0], tps / pos.sum()])
    fpr = np.concatenate([[0.0], fps / (~pos).sum()])
    return fpr, tpr, np.concatenate([[np.inf], s[last]])


def predictions(probs: Any) -> np.ndarray:
    """Predicted class (N,) int64: argmax of the probabilities (N, C), first class on a tie."""
    p = to_numpy(probs, "probs")
    if p.ndim != 2:
        raise ValueError(f"probs: expected shape (N, C), got {p.shape}")
    return p.argmax(axis=1)


def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of images whose argmax class is the label."""
    p, y = _probs_labels(probs, labels)
    return float((p.argmax(axis=1) == y).mean())


def confusion_matrix(probs: Any, labels: Any) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted (argmax) class."""
    p, y = _probs_labels(probs, labels)
    n_classes = p.shape[1]
    flat = np.bincount(y * n_classes + p.argmax(axis=1), minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def precision_recall_f1(probs: Any, labels: Any) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 (C,) float64 and support (C,) int64.

    A ratio whose denominator is zero (a class never predicted, never present, or both precision
    and recall 0) is 0, as scikit-learn's ``zero_division=0``.
    """
    cm = confusion_matrix(probs, labels)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)

    precision, recall = ratio(tp, predicted), ratio(tp, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(
    probs: Any, labels: Any, class_names: Sequence[str] = CLASS_NAMES
) -> dict[str, Any]:
    """Every classification metric in one JSON-serialisable dict of plain Python numbers.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) integer labels; every class must occur for its AUC to exist.
        class_names: C names, in class-index order.

    Returns:
        ``{"n": N, "class_names": [...], "accuracy": float, "auc_micro": float,
        "auc_macro": float, "macro": {"precision", "recall", "f1"},
        "per_class": {name: {"auc", "precision", "recall", "f1", "support"}},
        "confusion_matrix": C lists of C ints (rows true, columns predicted)}``.
        Macro precision/recall/F1 are unweighted means of the per-class values.
    """
    p, y = _probs_labels(probs, labels)
    names = list(class_names)
    if len(names) != p.shape[1] or len(set(names)) != len(names):
        raise ValueError(f"class_names: expected {p.shape[1]} distinct names, got {names}")
    aucs = per_class_auc(p, y)
    prf = precision_recall_f1(p, y)
    per_class = {
        name: {
            "auc": float(aucs[c]),
            "precision": float(prf["precision"][c]),
            "recall": float(prf["recall"][c]),
            "f1": float(prf["f1"][c]),
            "support": int(prf["support"][c]),
        }
        for c, name in enumerate(names)
    }
    return {
        "n": int(y.size),
        "class_names": names,
        "accuracy": accuracy(p, y),
        "auc_micro": micro_auc(p, y),
        "auc_macro": float(aucs.mean()),
        "macro": {k: float(prf[k].mean()) for k in ("precision", "recall", "f1")},
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(p, y).tolist(),
    }
