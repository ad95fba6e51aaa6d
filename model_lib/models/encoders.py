"""Encoders. Each returns its stage features, shallow to deep, and publishes per stage its
``out_channels`` and ``reductions`` (input size / feature size): what the decoder is sized from.

- ``DenseNetEncoder``: torchvision DenseNet121/201 on a grey image (ImageNet normalisation inside).
- ``ResSEEncoder``: the paper's from-scratch encoder, residual block + squeeze-excitation per stage.
- ``PlainUNetEncoder``: the original UNet's double-conv stages (MT-UNet and the ablation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models import densenet121, densenet201

from model_lib.models.layers import ResidualBlock, SEBlock, double_conv

DenseNetVariant = Literal["densenet121", "densenet201"]
InputNorm = Literal["imagenet", "none"]

UNET_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 1024)
"""Stage widths of the paper's Res+SE encoder and of the plain UNet encoder at width 1."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_DENSENETS: dict[str, Callable[..., nn.Module]] = {
    "densenet121": densenet121,
    "densenet201": densenet201,
}
_DENSENET_STAGES: tuple[str, ...] = (
    "relu0",
    "denseblock1",
    "denseblock2",
    "denseblock3",
    "denseblock4",
)


class DenseNetEncoder(nn.Module):
    """A torchvision DenseNet's ``features``, read at the end of each dense block.

    Input (B, 1, H, W) in [0, 1]; the grey channel is repeated to RGB and, with
    ``input_norm="imagenet"``, normalised with ImageNet's mean/std here, so callers feed every
    branch the same tensor (``"none"``: repeated as it is, as the authors do). Output: 5 maps,
    ``relu0`` (/2) then ``denseblock1..4`` (/4 .. /32); the last one (DenseNet201: 1920 ch) is
    the decoder bottleneck.
    :meth:`head_features` gives the classifiers what torchvision's ``DenseNet.forward`` gives its
    own: ``relu(norm5)`` (norm5 is the batch norm after denseblock4).

    ``self.features`` keeps torchvision's module names, so torchvision state dicts load as they are
    (see ``model_lib.models.weights``). Weights start random: the builder loads a local file.
    """

    def __init__(
        self, variant: DenseNetVariant = "densenet201", input_norm: InputNorm = "imagenet"
    ) -> None:
        super().__init__()
        if variant not in _DENSENETS:
            raise ValueError(
                f"unknown DenseNet variant {variant!r}; expected one of {sorted(_DENSENETS)}"
            )
        if input_norm not in ("imagenet", "none"):
            raise ValueError(f"input_norm must be 'imagenet' or 'none', got {input_norm!r}")
        self.variant = variant
        self.input_norm = input_norm
        self.features: nn.Sequential = _DENSENETS[variant](weights=None).features
        # Not persistent: a state dict holds learned weights only, so torchvision's keys match.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        blocks_out = [
            self.features.get_submodule(f"transition{i}").norm.num_features for i in (1, 2, 3)
        ]
        self.num_features: int = self.features.norm5.num_features
        self.out_channels: tuple[int, ...] = (
            self.features.conv0.out_channels,
            *blocks_out,
            self.num_features,
        )
        self.reductions: tuple[int, ...] = (2, 4, 8, 16, 32)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 1, H, W) in [0, 1] -> 5 maps (B, out_channels[i], ~H/r, ~W/r), r in reductions."""
        h = x.expand(-1, 3, -1, -1)
        if self.input_norm == "imagenet":
            h = (h - self.mean) / self.std
        stages = []
        for name, module in self.features.named_children():
            if name == "norm5":
                break
            h = module(h)
            if name in _DENSENET_STAGES:
                stages.append(h)
        return stages

    def head_features(self, deepest: Tensor) -> Tensor:
        """``relu(norm5(denseblock4))``: (B, num_features, h, w) -> same shape.

        torchvision's forward applies ``F.relu(features, inplace=True)`` right after ``norm5``, so
        the tensor a forward hook on ``norm5`` stores (the authors' MSFF input) is this one.
        """
        return torch.relu(self.features.norm5(deepest))


class _PoolingEncoder(nn.Module):
    """Stages at full, 1/2, 1/4, ... resolution: a 2x2 max-pool before every stage but the first."""

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.out_channels: tuple[int, ...] = tuple(channels)
        self.reductions: tuple[int, ...] = tuple(2**i for i in range(len(channels)))

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, Cin, H, W) -> one map per stage, (B, out_channels[i], floor(H/2^i), floor(W/2^i))."""
        features = []
        h = x
        for i, stage in enumerate(self.stages):
            h = stage(h if i == 0 else self.pool(h))
            features.append(h)
        return features


class ResSEEncoder(_PoolingEncoder):
    """The paper's second encoder: per stage a residual block then an SE block.

    ``channels`` are the stage widths (paper: 64, 128, 256, 512, 1024); ``se_reduction`` is the SE
    squeeze ratio (16). Trained from scratch on the 1-channel image.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = UNET_CHANNELS,
        se_reduction: int = 16,
    ) -> None:
        widths = [in_channels, *channels]
        stages = [
            nn.Sequential(ResidualBlock(cin, cout), SEBlock(cout, se_reduction))
            for cin, cout in pairwise(widths)
        ]
        super().__init__(stages, channels)


class PlainUNetEncoder(_PoolingEncoder):
    """The original UNet encoder: (3x3 conv, BN, ReLU) x 2 per stage, widths 64 .. 1024."""

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = UNET_CHANNELS) -> None:
        widths = [in_channels, *channels]
        stages = [double_conv(cin, cout) for cin, cout in pairwise(widths)]
        super().__init__(stages, channels)
