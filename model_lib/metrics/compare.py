"""Comparing two models on the same test images: paired t-test and paired bootstrap.

The Student-t tail comes from the regularised incomplete beta function, evaluated by its
continued fraction (modified Lentz method), so the library needs no scipy.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from model_lib.metrics._arrays import to_labels, to_numpy
from model_lib.metrics.classification import Average, weighted_auc

_TINY = 1e-300
_CF_TOL = 1e-15
_CF_MAX_TERMS = 10_000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """``1 / (1 + d1 / (1 + d2 / (1 + ...)))`` of I_x(a, b); converges fast for
    ``x < (a + 1) / (a + b + 2)``.

    d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1)),
    d_{2m}   = m (b - m) x / ((a + 2m - 1)(a + 2m)).
    """
    value = _TINY  # the leading term b0 = 0, nudged off zero as Lentz's method requires
    c, d = value, 0.0
    for k in range(1, _CF_MAX_TERMS + 1):
        if k == 1:
            numerator = 1.0
        elif k % 2 == 0:
            m = (k - 2) // 2
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            m = (k - 1) // 2
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + numerator / c
        c = c if abs(c) > _TINY else _TINY
        value *= c * d
        if abs(c * d - 1.0) < _CF_TOL:
            return value
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def _incomplete_beta(a: float, b: float, x: float, one_minus_x: float) -> float:
    """Regularised incomplete beta I_x(a, b); ``one_minus_x`` is passed in to avoid cancellation."""
    if x <= 0.0:
        return 0.0
    if one_minus_x <= 0.0:
        return 1.0
    log_front = (
        a * math.log(x)
        + b * math.log(one_minus_x)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) / a * _beta_continued_fraction(a, b, x)
    # Symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its fast region.
    return 1.0 - math.exp(log_front) / b * _beta_continued_fraction(b, a, one_minus_x)


def student_t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with ``df`` degrees of freedom.

    ``P(|T| > |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)``.
    """
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    t2 = t * t
    two_sided = _incomplete_beta(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return 0.5 * two_sided if t > 0 else 1.0 - 0.5 * two_sided


def paired_t_test(a: Any, b: Any) -> tuple[float, float]:
    """Two-sided paired t-test of ``mean(a - b) == 0``.

    Args:
        a: (N,) per-image values of model A (e.g. ``cc`` per image), N >= 2.
        b: (N,) the same images' values for model B.

    Returns:
        ``(t, p)`` with ``t = mean(d) / (std(d, ddof=1) / sqrt(N))`` on ``N - 1`` degrees of
        freedom. When every difference is equal: ``(0.0, 1.0)`` if they are all zero (identical
        results), else ``(+-inf, 0.0)``.
    """
    x, y = to_numpy(a, "a"), to_numpy(b, "b")
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"a and b: expected two (N,) arrays with N >= 2, got {x.shape}, {y.shape}")
    d = x - y
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(d.size))
    return t, min(1.0, 2.0 * student_t_sf(abs(t), d.size - 1))


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")


def _stratified_counts(labels: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) multiplicities of a bootstrap resample drawn within each class.

    Every resample keeps each class's image count, so no resample lacks a class and every
    one-vs-rest AUC exists (pROC's default stratified bootstrap does the same).
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, labels.size))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        uniform = np.full(members.size, 1.0 / members.size)
        counts[:, members] = rng.multinomial(members.size, uniform, size=n_boot)
    return counts


def bootstrap_auc_ci(
    probs: Any,
    labels: Any,
    n_boot: int = 2000,
    seed: int = 0,
    average: Average = "macro",
    confidence: float = 0.95,
) -> dict[str, float]:
    """Percentile bootstrap interval of one model's AUC (class-stratified resampling).

    Args:
        probs: (N, C) probabilities; labels: (N,) integer labels.
        average: "macro", "micro" or a class index (see ``weighted_auc``).

    Returns:
        ``{"auc", "ci_low", "ci_high"}`` as plain floats; ``auc`` is on all images.
    """
    _check_n_boot(n_boot)
    y = to_labels(labels)
    auc = float(weighted_auc(probs, y, np.ones((1, y.size)), average)[0])
    boot = weighted_auc(probs, y, _stratified_counts(y, n_boot, seed), average)
    low, high = _percentile_interval(boot, confidence)
    return {"auc": auc, "ci_low": low, "ci_high": high}


def bootstrap_auc_difference(
    probs_a: Any,
    probs_b: Any,
    labels: Any,
    n_boot: int = 2000,
    seed: int = 0,
    average: Average = "macro",
    confidence: float = 0.95,
) -> dict[str, float]:
    """Paired bootstrap of ``AUC(A) - AUC(B)`` over test images.

    Each resample draws images with replacement within each class and scores both models on the
    same draw. The interval is the percentile interval of the resampled differences; the p-value
    is two-sided, ``erfc(|delta| / (sd * sqrt 2))`` with ``sd`` their standard deviation (the
    bootstrap test of pROC's ``roc.test``). Identical models give delta 0 and p 1.

    Args:
        probs_a, probs_b: (N, C) probabilities of the two models on the same images.
        labels: (N,) integer labels.
        n_boot: number of resamples; seed: their generator's seed (same seed, same result).
        average: "macro", "micro" or a class index (see ``weighted_auc``).
        confidence: coverage of the interval.

    Returns:
        ``{"delta", "ci_low", "ci_high", "p_value", "auc_a", "auc_b"}`` as plain floats.
    """
    _check_n_boot(n_boot)
    y = to_labels(labels)
    pa, pb = to_numpy(probs_a, "probs_a"), to_numpy(probs_b, "probs_b")
    if pa.shape != pb.shape:
        raise ValueError(f"probs_a and probs_b: shapes differ ({pa.shape} vs {pb.shape})")
    ones = np.ones((1, y.size))
    auc_a = float(weighted_auc(pa, y, ones, average)[0])
    auc_b = float(weighted_auc(pb, y, ones, average)[0])
    counts = _stratified_counts(y, n_boot, seed)
    diffs = weighted_auc(pa, y, counts, average) - weighted_auc(pb, y, counts, average)
    low, high = _percentile_interval(diffs, confidence)
    delta = auc_a - auc_b
    sd = float(diffs.std(ddof=1))
    if sd > 0:
        p_value = math.erfc(abs(delta) / (sd * math.sqrt(2.0)))
    else:
        p_value = 1.0 if delta == 0 else 0.0
    return {
        "delta": delta,
        "ci_low": low,
        "ci_high": high,
        "p_value": p_value,
        "auc_a": auc_a,
        "auc_b": auc_b,
    }


def bootstrap_ci(
    values: Any, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95
) -> dict[str, float]:
    """Percentile bootstrap interval of the mean of per-image values (N,).

    For one metric of one model (e.g. per-image CC, or per-image correctness for accuracy), or of
    a paired difference ``a - b`` between two models.

    Returns:
        ``{"mean", "ci_low", "ci_high"}`` as plain floats.
    """
    _check_n_boot(n_boot)
    v = to_numpy(values, "values")
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values: expected a non-empty (N,) array, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(v.size, np.full(v.size, 1.0 / v.size), size=n_boot)
    low, high = _percentile_interval(counts @ v / v.size, confidence)
    return {"mean": float(v.mean()), "ci_low": low, "ci_high": high}
