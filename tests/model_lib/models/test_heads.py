from __future__ import annotations

import pytest
import torch
from torch import nn

from model_lib.models.heads import (
    DenseNetHead,
    FusionClassifier,
    SaliencyHead,
    spatial_log_softmax,
)


@pytest.mark.parametrize("hw", [(1, 1), (7, 5), (320, 256)])
def test_spatial_log_softmax_normalises_each_map_over_all_pixels(hw: tuple[int, int]) -> None:
    logits = torch.randn(3, 1, *hw) * 10
    log_p = spatial_log_softmax(logits)
    assert log_p.shape == logits.shape
    torch.testing.assert_close(log_p.exp().sum(dim=(1, 2, 3)), torch.ones(3))
    # Shift-invariant per image, like any softmax.
    torch.testing.assert_close(spatial_log_softmax(logits + 5.0), log_p)


def test_spatial_log_softmax_is_float32_under_bf16_autocast() -> None:
    head = SaliencyHead(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(torch.randn(2, 8, 40, 32))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(dim=(1, 2, 3)), torch.ones(2))


def test_saliency_head_layers() -> None:
    head = SaliencyHead(64)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (64, 64, (3, 3)),
        (64, 1, (1, 1)),
    ]
    assert head(torch.randn(2, 64, 9, 7)).shape == (2, 1, 9, 7)


def test_fusion_classifier_pools_and_concatenates_both_scales() -> None:
    clf = FusionClassifier(deep_channels=1920, shallow_channels=64).eval()
    first, dropout, _, last = clf.mlp
    assert (first.in_features, first.out_features) == (1984, 64)
    assert dropout.p == 0.25
    assert (last.in_features, last.out_features) == (64, 3)
    deep, shallow = torch.randn(2, 1920, 10, 8), torch.randn(2, 64, 320, 256)
    logits = clf(deep, shallow)
    pooled = torch.cat([deep.mean(dim=(2, 3)), shallow.mean(dim=(2, 3))], dim=1)
    torch.testing.assert_close(logits, clf.mlp(pooled))
    assert logits.shape == (2, 3)


def test_densenet_head_pools_then_classifies() -> None:
    head = DenseNetHead(16, 3)
    features = torch.relu(torch.randn(2, 16, 5, 4))
    expected = head.fc(features.mean(dim=(2, 3)))
    torch.testing.assert_close(head(features), expected)
