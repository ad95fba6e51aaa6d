"""Output heads: the gaze saliency map, DenseNet's classifier and the multi-scale fusion one."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model_lib.models.layers import conv_bn_relu


def spatial_log_softmax(logits: Tensor) -> Tensor:
    """Log-softmax over all pixels of each map: (B, 1, H, W) -> (B, 1, H, W), float32.

    Computed in float32 even under autocast: over ~80k pixels bf16 would lose most of the mass.
    """
    b, c, h, w = logits.shape
    return logits.reshape(b, c * h * w).float().log_softmax(dim=1).reshape(b, c, h, w)


class SaliencyHead(nn.Module):
    """3x3 conv-BN-ReLU, 1x1 conv to one channel, log-softmax over the H*W pixels.

    (B, in_channels, H, W) -> (B, 1, H, W) log-probabilities: ``exp`` sums to 1 per image, ready for
    KL(GT || pred) against a sum-normalised target.
    """

    def __init__(self, in_channels: int = 64, hidden_channels: int | None = None) -> None:
        super().__init__()
        hidden = hidden_channels or in_channels
        self.body = conv_bn_relu(in_channels, hidden)
        self.out = nn.Conv2d(hidden, 1, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return spatial_log_softmax(self.out(self.body(x)))


class DenseNetHead(nn.Module):
    """DenseNet's own classifier, as torchvision runs it: global average pool, linear.

    Reads ``relu(norm5)`` (``DenseNetEncoder.head_features``): (B, in_features, h, w) ->
    (B, num_classes) logits. Paper: Linear(1920, 3).
    """

    def __init__(self, in_features: int = 1920, num_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features.mean(dim=(2, 3)))


class FusionClassifier(nn.Module):
    """Multi-scale feature fusion: GAP(deep map) ++ GAP(shallow map) -> Linear -> Dropout -> ReLU
    -> Linear.

    Paper: deep = DenseNet ``relu(norm5)`` (1920), shallow = decoder d1 (64), 1984 -> 64 -> 3.
    (B, deep_channels, h, w), (B, shallow_channels, H, W) -> (B, num_classes) logits.
    """

    def __init__(
        self,
        deep_channels: int,
        shallow_channels: int,
        hidden: int = 64,
        num_classes: int = 3,
        dropout: float = 0.25,
    ) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(deep_channels + shallow_channels, hidden),
            nn.Dropout(dropout),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        pooled = torch.cat([deep.mean(dim=(2, 3)), shallow.mean(dim=(2, 3))], dim=1)
        return self.mlp(pooled)
