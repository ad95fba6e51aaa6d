from __future__ import annotations

import pytest
import torch
from torch import nn

from model_lib.models.layers import ResidualBlock, SEBlock, double_conv


@pytest.mark.parametrize(
    ("channels", "reduction", "hidden"),
    [(64, 16, 4), (1024, 16, 64), (8, 16, 1), (3, 1, 3), (17, 4, 4)],
)
def test_se_block_squeezes_to_c_over_r_and_keeps_the_shape(
    channels: int, reduction: int, hidden: int
) -> None:
    se = SEBlock(channels, reduction)
    first, _, second, _ = se.fc
    assert (first.in_features, first.out_features) == (channels, hidden)
    assert (second.in_features, second.out_features) == (hidden, channels)
    x = torch.randn(2, channels, 7, 5)
    assert se(x).shape == x.shape


def test_se_block_scales_each_channel_by_a_gate_from_its_global_mean() -> None:
    se = SEBlock(4, reduction=2)
    x = torch.randn(3, 4, 6, 5)
    gate = torch.sigmoid(se.fc[2](torch.relu(se.fc[0](x.mean(dim=(2, 3))))))
    torch.testing.assert_close(se(x), x * gate[:, :, None, None])
    assert ((gate > 0) & (gate < 1)).all()
    # A zero excitation gives a gate of exactly 1/2 everywhere.
    nn.init.zeros_(se.fc[2].weight)
    nn.init.zeros_(se.fc[2].bias)
    torch.testing.assert_close(se(x), x / 2)


def test_se_block_rejects_a_zero_reduction() -> None:
    with pytest.raises(ValueError, match="reduction"):
        SEBlock(8, reduction=0)


@pytest.mark.parametrize(("cin", "cout", "hw"), [(1, 8, (9, 7)), (8, 8, (4, 6)), (5, 3, (1, 1))])
def test_residual_block_maps_channels_and_keeps_size(
    cin: int, cout: int, hw: tuple[int, int]
) -> None:
    block = ResidualBlock(cin, cout)
    assert isinstance(block.shortcut, nn.Conv2d) and block.shortcut.kernel_size == (3, 3)
    out = block(torch.randn(2, cin, *hw))
    assert out.shape == (2, cout, *hw)
    assert (out >= 0).all()


def test_residual_block_adds_the_shortcut_before_the_relu() -> None:
    block = ResidualBlock(2, 3).eval()
    x = torch.randn(1, 2, 5, 5)
    torch.testing.assert_close(block(x), torch.relu(block.body(x) + block.shortcut(x)))


def test_double_conv_is_two_conv_bn_relu() -> None:
    block = double_conv(3, 6)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 6, (3, 3)),
        (6, 6, (3, 3)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in block.modules()) == 2
    assert block(torch.randn(2, 3, 5, 4)).shape == (2, 6, 5, 4)
