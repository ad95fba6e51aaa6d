from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.training.evaluate import classification_metrics, predict, stage_val_loss
from model_lib.training.stages import PAPER_STAGES
from tests.model_lib.training.conftest import HW, ToyNet


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict(toy: ToyNet, splits: tuple[SplitArrays, SplitArrays], precision: str) -> None:
    val = splits[1]
    out = predict(toy, BatchLoader(val, 5), precision=precision)
    n = len(val)
    assert out["probs"].shape == (n, 3) and out["probs"].dtype == np.float32
    np.testing.assert_allclose(out["probs"].sum(axis=1), 1, rtol=1e-5)
    assert out["saliency"].shape == (n, *HW) and out["saliency"].dtype == np.float32
    np.testing.assert_allclose(out["saliency"].sum(axis=(1, 2)), 1, rtol=1e-4)
    np.testing.assert_array_equal(out["labels"], val.labels)
    np.testing.assert_array_equal(out["indices"], np.arange(n))
    assert not toy.training
    if precision == "fp32":
        # The same numbers one batch at a time: batching and order change nothing.
        single = predict(toy, BatchLoader(val, 1))
        np.testing.assert_allclose(single["probs"], out["probs"], rtol=1e-5, atol=1e-6)


def test_predict_needs_a_batch(toy: ToyNet, splits: tuple[SplitArrays, SplitArrays]) -> None:
    with pytest.raises(ValueError, match="no batch"):
        predict(toy, BatchLoader(splits[1], 100, drop_last=True))


def test_stage_val_loss_is_the_size_weighted_mean(
    toy: ToyNet, splits: tuple[SplitArrays, SplitArrays]
) -> None:
    s2 = PAPER_STAGES[2]
    # 12 images in batches of 5, 5, 2: the loss per image must not depend on the batching.
    uneven = stage_val_loss(toy, s2, BatchLoader(splits[1], 5))
    whole = stage_val_loss(toy, s2, BatchLoader(splits[1], 12))
    assert uneven["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)
    assert uneven["val_cc"] == pytest.approx(whole["val_cc"], rel=1e-5)
    assert set(uneven) == {"val_loss", "val_cc"}


def test_classification_metrics() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    m = classification_metrics(probs, np.array([0, 1, 2, 1]))
    assert m["val_accuracy"] == 0.75
    # Each class's scores separate it from the others; flattened, only the pair (0.4 true class,
    # 0.5 wrong class) of the 4 x 8 is out of order.
    assert m["val_auc_macro"] == 1.0
    assert m["val_auc_micro"] == pytest.approx(31 / 32)
    missing = classification_metrics(probs, np.array([0, 1, 1, 1]))
    assert missing["val_accuracy"] == 0.5
    assert math.isnan(missing["val_auc_macro"]) and math.isnan(missing["val_auc_micro"])
    diverged = classification_metrics(np.full((4, 3), np.nan), np.array([0, 1, 2, 1]))
    assert all(math.isnan(v) for v in diverged.values())


def test_diverged_saliency_gives_nan_metrics(
    toy: ToyNet, splits: tuple[SplitArrays, SplitArrays]
) -> None:
    with torch.no_grad():
        toy.saliency_head.weight.fill_(float("nan"))
    out = stage_val_loss(toy, PAPER_STAGES[2], BatchLoader(splits[1], 6))
    assert math.isnan(out["val_loss"]) and math.isnan(out["val_cc"])
