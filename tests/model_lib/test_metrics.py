from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from sklearn import metrics as skm

from model_lib.metrics import (
    accuracy,
    auc_judd,
    bootstrap_auc_ci,
    bootstrap_auc_difference,
    bootstrap_ci,
    cc,
    classification_report,
    confusion_matrix,
    kld,
    macro_auc,
    micro_auc,
    nss,
    paired_t_test,
    per_class_auc,
    precision_recall_f1,
    predictions,
    roc_auc,
    roc_curve,
    saliency_summary,
    sim,
    student_t_sf,
    weighted_auc,
)
from model_lib.metrics.saliency import MATLAB_EPS

METRICS_DIR = Path(__file__).resolve().parents[2] / "model_lib" / "metrics"


def positive_maps(seed: int, shape: tuple[int, ...] = (4, 6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) + 0.01


def grid(values: list[float], side: int) -> np.ndarray:
    return np.asarray(values, dtype=float).reshape(1, side, side)


# --- saliency: properties --------------------------------------------------------------------


def test_identical_maps_score_perfectly() -> None:
    m = positive_maps(0)
    np.testing.assert_allclose(cc(m, m), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim(m, m), 1.0, atol=1e-12)
    np.testing.assert_allclose(kld(m, m), 0.0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 0.3, 7.0, 1e5])
def test_distribution_metrics_ignore_positive_scaling(scale: float) -> None:
    pred, gt = positive_maps(1), positive_maps(2)
    for metric in (cc, sim, kld):
        base = metric(pred, gt)
        np.testing.assert_allclose(metric(scale * pred, gt), base, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(metric(pred, scale * gt), base, rtol=1e-9, atol=1e-12)


def test_cc_of_a_map_and_its_negative_is_minus_one() -> None:
    m = positive_maps(3)
    np.testing.assert_allclose(cc(m, -m), -1.0, atol=1e-12)
    np.testing.assert_allclose(cc(m, 2.0 - 3.0 * m), -1.0, atol=1e-12)


@settings(max_examples=50, deadline=None)
@given(
    pred=arrays(np.float64, (2, 4, 3), elements=st.floats(0.0, 100.0)),
    gt=arrays(np.float64, (2, 4, 3), elements=st.floats(0.0, 100.0)),
)
def test_metric_ranges_and_symmetry(pred: np.ndarray, gt: np.ndarray) -> None:
    # A positive floor keeps every map summable: all-zero maps are rejected, tested elsewhere.
    pred, gt = pred + 1e-3, gt + 1e-3
    c = cc(pred, gt)
    assert np.all(np.abs(c) <= 1.0 + 1e-12)
    np.testing.assert_allclose(c, cc(gt, pred), atol=1e-12)
    s = sim(pred, gt)
    assert np.all((s >= 0.0) & (s <= 1.0 + 1e-12))
    np.testing.assert_allclose(s, sim(gt, pred), atol=1e-12)
    assert np.all(kld(pred, gt) >= -1e-12)


# --- saliency: hand-computed cases -----------------------------------------------------------


def test_kld_by_hand() -> None:
    # Uniform prediction, all ground truth on one pixel: log(1 / 0.25).
    got = kld(grid([1, 1, 1, 1], 2), grid([5, 0, 0, 0], 2))
    assert got[0] == pytest.approx(math.log(4.0), rel=1e-12)
    # pred (0.75, 0.25, 0, 0), gt (0.5, 0.5, 0, 0): 0.5 log(0.5/0.75) + 0.5 log(0.5/0.25).
    got = kld(grid([3, 1, 0, 0], 2), grid([1, 1, 0, 0], 2))
    assert got[0] == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-12)


def test_kld_eps_bounds_the_cost_of_a_missed_pixel() -> None:
    # All ground truth where the prediction is 0: log(1 / eps), finite.
    got = kld(grid([0, 1, 1, 1], 2), grid([1, 0, 0, 0], 2))
    assert got[0] == pytest.approx(math.log(1.0 / MATLAB_EPS), rel=1e-9)
    looser = kld(grid([0, 1, 1, 1], 2), grid([1, 0, 0, 0], 2), eps=1e-3)
    assert looser[0] == pytest.approx(math.log(1e-3 + 1.0 / 1e-3), rel=1e-12)


def test_cc_by_hand() -> None:
    pred = grid([1, 2, 3, 4], 2)
    # Centred: (-1.5, -0.5, 0.5, 1.5) and (0.5, -0.5, -0.5, 0.5): orthogonal.
    assert cc(pred, grid([1, 0, 0, 1], 2))[0] == pytest.approx(0.0, abs=1e-12)
    # (-0.5, -0.5, 0.5, 0.5): dot 2, norms^2 5 and 1.
    assert cc(pred, grid([0, 0, 1, 1], 2))[0] == pytest.approx(2 / math.sqrt(5), rel=1e-12)


@pytest.mark.parametrize("value", [2.0, 0.1, 0.7, 1 / 3])
def test_constant_maps_score_zero_cc_and_nss(value: float) -> None:
    constant = np.full((1, 4, 5), value)
    other = np.arange(20.0).reshape(1, 4, 5)
    assert cc(constant, other)[0] == 0.0
    assert cc(other, constant)[0] == 0.0
    assert nss(constant, other)[0] == 0.0


def test_sim_by_hand() -> None:
    uniform = grid([1, 1, 1, 1], 2)
    assert sim(uniform, grid([1, 0, 0, 0], 2))[0] == pytest.approx(0.25)
    # gt (0.5, 0.25, 0.25, 0) vs 0.25 everywhere: 0.25 + 0.25 + 0.25 + 0.
    assert sim(uniform, grid([2, 1, 1, 0], 2))[0] == pytest.approx(0.75)


def test_nss_by_hand() -> None:
    pred = grid(list(range(9)), 3)  # mean 4, std (ddof=1) sqrt(60 / 8)
    std = math.sqrt(7.5)
    top = np.zeros((1, 3, 3))
    top[0, 2, 2] = 1
    assert nss(pred, top)[0] == pytest.approx(4 / std, rel=1e-12)
    ends = top.copy()
    ends[0, 0, 0] = 1
    assert nss(pred, ends)[0] == pytest.approx(0.0, abs=1e-12)
    # Counts mark fixated pixels; the multiplicity does not weigh.
    counts = ends * np.array([[[5, 0, 0], [0, 0, 0], [0, 0, 1]]])
    assert nss(pred, counts)[0] == pytest.approx(0.0, abs=1e-12)
    assert nss(grid([3] * 9, 3), top)[0] == 0.0


@pytest.mark.parametrize(
    ("fixated_values", "expected"),
    [
        ([8], 1.0),
        ([0], 0.5),  # the only threshold gives (1, 1): the benchmark's convention
        ([4], 0.75),  # (0, 0) -> (0.5, 1) -> (1, 1)
        ([8, 4], 25 / 28),  # (0, 0) -> (0, 0.5) -> (3/7, 1) -> (1, 1)
    ],
)
def test_auc_judd_by_hand(fixated_values: list[int], expected: float) -> None:
    pred = grid(list(range(9)), 3)
    fixations = np.isin(pred, fixated_values).astype(float)
    assert auc_judd(pred, fixations)[0] == pytest.approx(expected, rel=1e-12)


def mit_auc_judd(s: np.ndarray, f: np.ndarray) -> float:
    """The benchmark's AUC_Judd.m loop, for maps without ties."""
    s, f = s.ravel(), f.ravel() > 0
    thresholds = np.sort(s[f])[::-1]
    n_fix, n_pix = thresholds.size, s.size
    tp, fp = [0.0], [0.0]
    for i, t in enumerate(thresholds, start=1):
        above = int((s >= t).sum())
        tp.append(i / n_fix)
        fp.append((above - i) / (n_pix - n_fix))
    tp.append(1.0)
    fp.append(1.0)
    return sum((fp[k + 1] - fp[k]) * (tp[k + 1] + tp[k]) / 2 for k in range(len(tp) - 1))


@pytest.mark.parametrize("seed", range(5))
def test_auc_judd_matches_the_benchmark_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.random((3, 9, 7))
    fixations = (rng.random((3, 9, 7)) < 0.15).astype(float)
    fixations[:, 0, 0] = 1  # at least one fixation
    fixations[:, 0, 1] = 0  # and one pixel not fixated
    expected = [mit_auc_judd(p, f) for p, f in zip(pred, fixations, strict=True)]
    np.testing.assert_allclose(auc_judd(pred, fixations), expected, rtol=1e-12)


def test_location_metrics_on_toy_maps() -> None:
    rng = np.random.default_rng(0)
    fixations = (rng.random((2, 40, 32)) < 0.05).astype(float)
    perfect = fixations + 0.1 * rng.random(fixations.shape)  # every fixated pixel on top
    assert np.allclose(auc_judd(perfect, fixations), 1.0)
    assert np.all(nss(perfect, fixations) > 3.0)
    noise = rng.random(fixations.shape)
    assert np.allclose(auc_judd(noise, fixations), 0.5, atol=0.06)
    assert np.allclose(nss(noise, fixations), 0.0, atol=0.25)
    constant = np.ones_like(fixations)
    assert np.array_equal(auc_judd(constant, fixations), [0.5, 0.5])
    assert np.array_equal(nss(constant, fixations), [0.0, 0.0])


def test_saliency_metrics_accept_tensors_and_a_channel_axis() -> None:
    pred, gt = positive_maps(4), positive_maps(5)
    fixations = (gt > 0.8).astype(float)
    fixations[:, 0, 0], fixations[:, 0, 1] = 1.0, 0.0
    for metric, other in ((kld, gt), (cc, gt), (sim, gt), (nss, fixations), (auc_judd, fixations)):
        expected = metric(pred, other)
        assert expected.shape == (4,) and expected.dtype == np.float64
        tensors = metric(torch.from_numpy(pred)[:, None], torch.from_numpy(other)[:, None])
        np.testing.assert_allclose(tensors, expected, rtol=1e-12)
    half = torch.from_numpy(pred).to(torch.bfloat16)
    np.testing.assert_allclose(cc(half, gt), cc(half.double().numpy(), gt), rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cc(np.ones((2, 3, 3)), np.ones((2, 3, 4))), "pred and gt: shapes differ"),
        (lambda: cc(np.ones((2, 4, 3)), np.ones((2, 3, 4))), "pred and gt: shapes differ"),
        (lambda: cc(np.ones((3, 3)), np.ones((3, 3))), r"pred: expected maps \(B, H, W\)"),
        (lambda: sim(np.ones((2, 2, 2)), -np.ones((2, 2, 2))), r"gt: negative values in image"),
        (
            lambda: kld(np.stack([np.ones((2, 2)), np.zeros((2, 2))]), np.ones((2, 2, 2))),
            r"pred: all-zero map in image\(s\) \[1\]",
        ),
        (lambda: kld(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2))), "pred: contains NaN"),
        (lambda: nss(np.ones((2, 2, 2)), np.zeros((2, 2, 2))), r"no fixated pixel in image\(s\)"),
        (lambda: nss(np.ones((1, 2, 2)), np.ones((1, 2, 3))), "pred and fixations: shapes"),
        (lambda: auc_judd(np.ones((1, 2, 2)), np.ones((1, 2, 2))), "every pixel is fixated"),
        (lambda: saliency_summary([]), "non-empty"),
    ],
)
def test_saliency_metrics_reject_bad_input(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_saliency_metrics_leave_their_inputs_untouched() -> None:
    pred, gt = positive_maps(6), positive_maps(7)
    fixations = (gt > 0.5).astype(float)
    copies = [pred.copy(), gt.copy(), fixations.copy()]
    for metric in (kld, cc, sim):
        metric(pred, gt)
    nss(pred, fixations)
    auc_judd(pred, fixations)
    for before, after in zip(copies, (pred, gt, fixations), strict=True):
        np.testing.assert_array_equal(before, after)


def test_saliency_summary() -> None:
    summary = saliency_summary(np.array([1.0, 2.0, 6.0]))
    assert summary == {"mean": 3.0, "median": 2.0, "std": pytest.approx(math.sqrt(14 / 3))}
    assert all(type(v) is float for v in summary.values())


# --- classification against scikit-learn -----------------------------------------------------


def random_probs(seed: int, n: int = 60, n_classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities rounded to one decimal (many ties) and labels covering every class."""
    rng = np.random.default_rng(seed)
    probs = np.round(rng.dirichlet(np.ones(n_classes), size=n), 1)
    labels = rng.permutation(np.arange(n) % n_classes)
    return probs, labels


@pytest.mark.parametrize("seed", range(4))
def test_aucs_match_sklearn(seed: int) -> None:
    probs, labels = random_probs(seed, n_classes=3 + seed % 2)
    onehot = np.eye(probs.shape[1])[labels]
    expected = [skm.roc_auc_score(onehot[:, c], probs[:, c]) for c in range(probs.shape[1])]
    np.testing.assert_allclose(per_class_auc(probs, labels), expected, rtol=1e-12)
    assert micro_auc(probs, labels) == pytest.approx(
        skm.roc_auc_score(onehot, probs, average="micro"), rel=1e-12
    )
    assert macro_auc(probs, labels) == pytest.approx(
        skm.roc_auc_score(onehot, probs, average="macro"), rel=1e-12
    )
    assert roc_auc(probs[:, 0], labels == 0) == pytest.approx(expected[0], rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed: int) -> None:
    probs, labels = random_probs(seed)
    fpr, tpr, thresholds = roc_curve(probs[:, 1], labels == 1)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels == 1, probs[:, 1], drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thr)
    # Its trapezoid area is the rank AUC.
    area = float((np.diff(fpr) * (tpr[1:] + tpr[:-1])).sum() / 2)
    assert area == pytest.approx(roc_auc(probs[:, 1], labels == 1), rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_counts_match_sklearn(seed: int) -> None:
    probs, labels = random_probs(seed, n=45)
    pred = predictions(probs)
    classes = list(range(probs.shape[1]))
    assert accuracy(probs, labels) == pytest.approx(skm.accuracy_score(labels, pred))
    np.testing.assert_array_equal(
        confusion_matrix(probs, labels), skm.confusion_matrix(labels, pred, labels=classes)
    )
    p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=classes, zero_division=0)
    got = precision_recall_f1(probs, labels)
    for key, expected in zip(("precision", "recall", "f1", "support"), (p, r, f, s), strict=True):
        np.testing.assert_allclose(got[key], expected, rtol=1e-12, err_msg=key)


def test_precision_of_a_class_never_predicted_is_zero() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.6, 0.3, 0.1]])
    labels = np.array([0, 1, 1, 2])
    got = precision_recall_f1(probs, labels)
    np.testing.assert_allclose(got["precision"], [1 / 3, 1.0, 0.0])
    np.testing.assert_allclose(got["recall"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(got["f1"], [0.5, 2 / 3, 0.0])
    np.testing.assert_array_equal(
        confusion_matrix(probs, labels), [[1, 0, 0], [1, 1, 0], [1, 0, 0]]
    )


def test_classification_report_is_json_and_consistent() -> None:
    probs, labels = random_probs(7)
    report = classification_report(torch.from_numpy(probs), torch.from_numpy(labels))
    assert json.loads(json.dumps(report)) == report
    assert report["class_names"] == ["Normal", "CHF", "Pneumonia"]
    assert report["n"] == 60
    assert report["auc_macro"] == pytest.approx(macro_auc(probs, labels))
    assert report["auc_micro"] == pytest.approx(micro_auc(probs, labels))
    assert report["per_class"]["CHF"]["auc"] == pytest.approx(per_class_auc(probs, labels)[1])
    assert report["per_class"]["Normal"]["support"] == 20
    _, _, f1, _ = skm.precision_recall_fscore_support(labels, predictions(probs), average="macro")
    assert report["macro"]["f1"] == pytest.approx(f1)
    assert sum(map(sum, report["confusion_matrix"])) == 60


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda p, y: per_class_auc(p, np.where(y == 2, 0, y)), "class 2 needs positives"),
        (lambda p, y: accuracy(p, np.where(y == 2, 3, y)), r"outside \[0, 3\)"),
        (lambda p, y: accuracy(p, y[:-1]), r"labels: expected shape \(60,\)"),
        (lambda p, y: accuracy(p, y + 0.5), "integer class indices"),
        (lambda p, y: accuracy(p[:, :1], y), r"probs: expected shape \(N, C\) with C >= 2"),
        (lambda p, y: classification_report(p, y, ["a", "b"]), "3 distinct names"),
        (lambda p, y: roc_auc(p[:, 0], np.ones(60)), "one positive and one negative"),
        (lambda p, y: weighted_auc(p, y, np.ones((2, 60)), average=5), "average"),
        (lambda p, y: weighted_auc(p, y, -np.ones((2, 60))), "weights: expected non-negative"),
    ],
)
def test_classification_metrics_reject_bad_input(call, match: str) -> None:
    probs, labels = random_probs(0)
    with pytest.raises(ValueError, match=match):
        call(probs, labels)


@pytest.mark.parametrize("average", ["macro", "micro", 1])
def test_weighted_auc_equals_auc_of_the_resampled_data(average: str | int) -> None:
    probs, labels = random_probs(3)
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, labels.size, labels.size) for _ in range(4)]
    counts = np.stack([np.bincount(d, minlength=labels.size) for d in draws])
    got = weighted_auc(probs, labels, counts, average=average)
    for k, d in enumerate(draws):
        p, y = probs[d], labels[d]
        onehot = np.eye(3)[y]
        if average == "micro":
            expected = skm.roc_auc_score(onehot.ravel(), p.ravel())
        elif average == "macro":
            expected = np.mean([skm.roc_auc_score(onehot[:, c], p[:, c]) for c in range(3)])
        else:
            expected = skm.roc_auc_score(onehot[:, average], p[:, average])
        assert got[k] == pytest.approx(expected, rel=1e-12)


# --- comparisons -----------------------------------------------------------------------------


T_VALUES = (-50.0, -3.0, -0.2, 0.0, 1e-9, 1e-5, 0.7, 2.0, 6.0, 40.0)


@pytest.mark.parametrize("df", [3.5, 10, 99, 1000])
def test_student_t_tail_matches_scipy(df: float) -> None:
    for t in T_VALUES:
        expected = stats.t.sf(t, df)
        assert student_t_sf(t, df) == pytest.approx(expected, rel=1e-10, abs=1e-300)


def test_student_t_tail_matches_closed_forms() -> None:
    # df = 1 (Cauchy) and df = 2 have closed forms; scipy rounds the df = 1 tail to 0.5 near 0.
    for t in T_VALUES:
        cauchy = 0.5 - math.atan(t) / math.pi
        assert student_t_sf(t, 1) == pytest.approx(cauchy, rel=1e-12)
        two = 0.5 - t / (2 * math.sqrt(t * t + 2))
        assert student_t_sf(t, 2) == pytest.approx(two, rel=1e-9)


@pytest.mark.parametrize(
    ("seed", "n", "shift"), [(0, 2, 0.3), (1, 5, 0.0), (2, 30, 0.1), (3, 200, 0.02)]
)
def test_paired_t_test_matches_scipy(seed: int, n: int, shift: float) -> None:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a + shift + 0.1 * rng.normal(size=n)
    t, p = paired_t_test(a, b)
    expected = stats.ttest_rel(a, b)
    assert t == pytest.approx(expected.statistic, rel=1e-10)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_paired_t_test_degenerate_cases() -> None:
    a = np.array([0.5, 0.6, 0.7])
    assert paired_t_test(a, a) == (0.0, 1.0)
    assert paired_t_test(a + 0.1, a) == (math.inf, 0.0)
    with pytest.raises(ValueError, match="N >= 2"):
        paired_t_test([1.0], [2.0])
    with pytest.raises(ValueError, match="a and b"):
        paired_t_test([1.0, 2.0], [2.0, 3.0, 4.0])


def separable_case(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model A ranks every class perfectly (AUC 1); model B's scores ignore the labels (its
    population AUC is 0.5), so the true macro difference is 0.5."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    probs_a = np.eye(3)[labels] * 0.8 + 0.1 * rng.random((n, 3))
    probs_b = rng.dirichlet(np.ones(3), size=n)
    return probs_a, probs_b, labels


def test_bootstrap_auc_difference_covers_the_true_difference() -> None:
    probs_a, probs_b, labels = separable_case()
    result = bootstrap_auc_difference(probs_a, probs_b, labels, n_boot=1000, seed=0)
    assert result["auc_a"] == 1.0
    assert result["delta"] == pytest.approx(1.0 - result["auc_b"])
    assert result["ci_low"] < 0.5 < result["ci_high"]
    assert result["ci_low"] < result["delta"] < result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.25
    assert result["p_value"] < 1e-6
    assert all(type(v) is float for v in result.values())


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    probs_a, probs_b, labels = separable_case(n=90)
    first = bootstrap_auc_difference(probs_a, probs_b, labels, n_boot=300, seed=3)
    assert bootstrap_auc_difference(probs_a, probs_b, labels, n_boot=300, seed=3) == first
    other = bootstrap_auc_difference(probs_a, probs_b, labels, n_boot=300, seed=4)
    assert other["delta"] == first["delta"] and other["ci_low"] != first["ci_low"]
    micro = bootstrap_auc_difference(probs_a, probs_b, labels, n_boot=300, average="micro")
    assert micro["delta"] == pytest.approx(1.0 - micro_auc(probs_b, labels))


def test_bootstrap_of_identical_models() -> None:
    _, probs, labels = separable_case(n=60)
    result = bootstrap_auc_difference(probs, probs, labels, n_boot=200)
    assert (result["delta"], result["ci_low"], result["ci_high"]) == (0.0, 0.0, 0.0)
    assert result["p_value"] == 1.0


def test_bootstrap_auc_ci_of_one_model() -> None:
    _, probs, labels = separable_case()
    result = bootstrap_auc_ci(probs, labels, n_boot=1000, seed=0)
    assert result["auc"] == pytest.approx(macro_auc(probs, labels))
    assert result["ci_low"] < 0.5 < result["ci_high"]
    assert result["ci_low"] < result["auc"] < result["ci_high"]


def test_bootstrap_ci_of_a_mean() -> None:
    values = np.random.default_rng(0).normal(0.6, 0.2, size=400)
    result = bootstrap_ci(values, n_boot=2000, seed=1)
    assert result["mean"] == pytest.approx(values.mean())
    assert result["ci_low"] < 0.6 < result["ci_high"]
    normal_width = 2 * 1.96 * values.std(ddof=1) / math.sqrt(values.size)
    assert result["ci_high"] - result["ci_low"] == pytest.approx(normal_width, rel=0.15)
    assert bootstrap_ci(values, n_boot=2000, seed=1) == result
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(values, confidence=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(values, n_boot=1)


# --- purity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(METRICS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_metrics_do_not_import_sklearn_or_scipy(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert not roots & {"sklearn", "scipy"}, path.name
