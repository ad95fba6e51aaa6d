"""UNet decoder sized from what the encoders report: skip widths and the bottleneck width."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_lib.models.layers import conv_bn_relu, double_conv


def shifted_decoder_channels(skip_channels: Sequence[int]) -> tuple[int, ...]:
    """The paper's decoder widths: each level takes the width of the next shallower skip.

    Skips (64, 128, 256, 512, 1024) give d1..d5 = (64, 64, 128, 256, 512): d5 = up(1920 -> 512)
    ++ e5 -> 512, ..., d1 = up(64 -> 64) ++ e1 -> 64.
    """
    return (skip_channels[0], *skip_channels[:-1])


class UpBlock(nn.Module):
    """One decoder level: nearest upsample to the skip's size, 3x3 conv-BN-ReLU, concatenate the
    skip, then (3x3 conv, BN, ReLU) x 2.

    Upsampling to the skip's exact size (x2 when sizes are even) lets odd inputs, where pooling
    floored a size, line up without cropping. (B, Cin, h, w), skip (B, Cs, H, W) -> (B, Cout, H, W).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = conv_bn_relu(in_channels, out_channels)
        self.fuse = double_conv(out_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
        return self.fuse(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """One ``UpBlock`` per skip, from the bottleneck up to the shallowest skip.

    Args:
        skip_channels: widths of the skip features, shallow to deep (an encoder's ``out_channels``,
            less its last stage when that stage is the bottleneck).
        bottleneck_channels: width of the deepest input (DenseNet201 denseblock4: 1920).
        decoder_channels: output width per level, shallow to deep; default
            :func:`shifted_decoder_channels` (the paper). MT-UNet passes ``skip_channels``.

    ``out_channels`` is the width of the last (full-resolution) output, what the heads read.
    """

    def __init__(
        self,
        skip_channels: Sequence[int],
        bottleneck_channels: int,
        decoder_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        skip_channels = tuple(skip_channels)
        widths = tuple(decoder_channels or shifted_decoder_channels(skip_channels))
        if len(widths) != len(skip_channels):
            raise ValueError(
                f"decoder_channels has {len(widths)} levels, there are {len(skip_channels)} skips"
            )
        self.skip_channels = skip_channels
        self.bottleneck_channels = bottleneck_channels
        self.decoder_channels = widths
        self.out_channels: int = widths[0]
        blocks = []
        in_channels = bottleneck_channels
        for skip, out in zip(reversed(skip_channels), reversed(widths), strict=True):
            blocks.append(UpBlock(in_channels, skip, out))
            in_channels = out
        # Deepest level first, the order they run in.
        self.blocks = nn.ModuleList(blocks)

    def forward(self, skips: Sequence[Tensor], bottleneck: Tensor) -> Tensor:
        """Skips shallow to deep and the bottleneck (B, Cb, h, w) -> (B, out_channels, H1, W1),
        H1 x W1 the size of the shallowest skip."""
        if len(skips) != len(self.blocks):
            raise ValueError(f"expected {len(self.blocks)} skip features, got {len(skips)}")
        x = bottleneck
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = block(x, skip)
        return x
