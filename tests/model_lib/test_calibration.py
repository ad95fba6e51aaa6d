"""Reliability bins and ECE on cases worked out by hand (confidences chosen to be exact in binary
floating point, so every bin boundary is where the arithmetic says)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model_lib.metrics import Reliability, expected_calibration_error, reliability

# Five images, two classes, four bins (0, .25], (.25, .5], (.5, .75], (.75, 1]:
#   conf .875 correct -> bin 3 | .75 wrong -> bin 2 (right-closed) | .625 correct -> bin 2
#   .75 correct -> bin 2      | .5 tie, argmax class 0, label 1: wrong -> bin 1
HAND_PROBS = [[0.875, 0.125], [0.75, 0.25], [0.625, 0.375], [0.25, 0.75], [0.5, 0.5]]
HAND_LABELS = [0, 1, 0, 1, 1]
# Gaps: bin 1 |0 - .5| = .5; bin 2 |2/3 - 2.125/3| = 1/24; bin 3 |1 - .875| = .125.
# ECE = .5/5 + 3/5 * 1/24 + .125/5 = .1 + .025 + .025.
HAND_ECE = 0.15


def test_hand_computed_bins_and_ece() -> None:
    rel = reliability(HAND_PROBS, HAND_LABELS, n_bins=4)
    np.testing.assert_allclose(rel.edges, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_array_equal(rel.counts, [0, 1, 3, 1])
    np.testing.assert_allclose(rel.confidence[1:], [0.5, 2.125 / 3, 0.875])
    np.testing.assert_allclose(rel.accuracy[1:], [0.0, 2 / 3, 1.0])
    assert math.isnan(rel.confidence[0]) and math.isnan(rel.accuracy[0])
    assert rel.ece == pytest.approx(HAND_ECE)
    assert rel.mce == pytest.approx(0.5)
    assert expected_calibration_error(HAND_PROBS, HAND_LABELS, n_bins=4) == pytest.approx(HAND_ECE)


def test_certain_and_right_is_perfectly_calibrated() -> None:
    probs = np.eye(3)[[0, 1, 2, 1]]
    rel = reliability(probs, [0, 1, 2, 1])
    assert rel.ece == 0.0 and rel.mce == 0.0
    assert rel.counts.tolist() == [0] * 9 + [4]  # confidence 1.0 closes the last bin


def test_certain_and_wrong_has_ece_one() -> None:
    probs = np.eye(3)[[1, 2, 0]]
    assert reliability(probs, [0, 1, 2]).ece == pytest.approx(1.0)


def test_one_bin_is_the_gap_between_mean_confidence_and_accuracy() -> None:
    probs = [[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.2, 0.2, 0.6]]
    rel = reliability(probs, [0, 0, 2], n_bins=1)
    assert rel.counts.tolist() == [3]
    assert rel.ece == pytest.approx(abs(2 / 3 - (0.5 + 0.7 + 0.6) / 3))


def test_tensors_are_accepted_and_the_dict_is_plain_json() -> None:
    rel = reliability(torch.tensor(HAND_PROBS), torch.tensor(HAND_LABELS), n_bins=4)
    assert isinstance(rel, Reliability)
    data = json.loads(json.dumps(rel.to_dict(), allow_nan=False))
    assert data["confidence"][0] is None and data["counts"] == [0, 1, 3, 1]
    assert data["ece"] == pytest.approx(HAND_ECE)


@pytest.mark.parametrize(
    ("probs", "labels", "n_bins", "match"),
    [
        (HAND_PROBS, HAND_LABELS, 0, "n_bins"),
        ([[0.5, 0.5]], [0, 1], 10, r"labels: expected shape \(1,\)"),
        ([0.5, 0.5], [0], 10, r"probs: expected shape \(N, C\)"),
        (np.zeros((0, 3)), [], 10, r"probs: expected shape \(N, C\)"),
        ([[1.2, -0.2], [0.5, 0.5]], [0, 1], 10, r"outside \[0, 1\] in row\(s\) \[0\]"),
        (
            [[0.5, 0.5], [0.4, 0.6]],
            [0, 2],
            10,
            r"labels: values outside \[0, 2\) at index\(es\) \[1\]",
        ),
        ([[np.nan, 0.5]], [0], 10, "probs: contains NaN"),
    ],
)
def test_bad_input_is_named(probs, labels, n_bins: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reliability(probs, labels, n_bins=n_bins)
