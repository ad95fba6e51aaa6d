"""Small building blocks shared by the encoders, the decoder and the heads.

Convolutions followed by batch norm carry no bias: the norm's shift makes it redundant.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (same padding), batch norm, ReLU: (B, Cin, H, W) -> (B, Cout, H, W)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """UNet's (3x3 conv, BN, ReLU) x 2: (B, Cin, H, W) -> (B, Cout, H, W)."""
    return nn.Sequential(
        conv_bn_relu(in_channels, out_channels), conv_bn_relu(out_channels, out_channels)
    )


class SEBlock(nn.Module):
    """Squeeze-and-excitation: rescale each channel by a gate computed from the global context.

    GAP -> Linear(C, C // reduction) -> ReLU -> Linear(C // reduction, C) -> sigmoid -> scale.
    The hidden width is at least 1 so narrow test configurations still work.
    (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1:
            raise ValueError(f"SE reduction must be >= 1, got {reduction}")
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        gate = self.fc(x.mean(dim=(2, 3)))
        return x * gate[:, :, None, None]


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a 3x3 convolutional shortcut, added, then ReLU.

    The shortcut is a full 3x3 convolution (not the usual 1x1 projection), as in the paper.
    (B, Cin, H, W) -> (B, Cout, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn_relu(in_channels, out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))
