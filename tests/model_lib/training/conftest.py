"""A toy stand-in for the dual-encoder UNet (same submodule names and outputs, a few hundred
parameters) and tiny learnable splits: the training tests exercise the loop, not the network."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.data.store import IMAGE_SCALE

HW = (16, 12)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()
    )


class ToyDenseNet(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            _conv_bn(1, num_features, 2), _conv_bn(num_features, num_features, 2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class ToyNet(nn.Module):
    """Same attributes and output keys as DualEncoderUNet, a few convolutions each."""

    def __init__(self, num_features: int = 8, width: int = 4, classifier: str = "fusion") -> None:
        super().__init__()
        self.densenet = ToyDenseNet(num_features)
        self.densenet_head = nn.Linear(num_features, 3)
        self.encoder = _conv_bn(1, width)
        self.decoder = _conv_bn(width + num_features, width)
        self.saliency_head = nn.Conv2d(width, 1, 1)
        self.fusion_classifier = nn.Sequential(
            nn.Linear(num_features + width, 8), nn.Dropout(0.25), nn.ReLU(), nn.Linear(8, 3)
        )
        self.classifier = classifier

    def forward_densenet(self, x: Tensor) -> dict[str, Tensor]:
        deep = self.densenet(x)
        pooled = deep.mean(dim=(2, 3))
        return {"densenet_logits": self.densenet_head(pooled), "embedding": pooled,
                "denseblock4": deep}  # fmt: skip

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        deep = self.densenet(x)
        pooled = deep.mean(dim=(2, 3))
        up = F.interpolate(deep, size=x.shape[-2:], mode="nearest")
        d1 = self.decoder(torch.cat([self.encoder(x), up], dim=1))
        logits = self.saliency_head(d1)
        b, _, h, w = logits.shape
        out = {
            "saliency": logits.reshape(b, h * w).float().log_softmax(1).reshape(b, 1, h, w),
            "densenet_logits": self.densenet_head(pooled),
            "fusion_logits": self.fusion_classifier(torch.cat([pooled, d1.mean(dim=(2, 3))], 1)),
            "embedding": pooled,
        }
        return {"logits": out[f"{self.classifier}_logits"], **out}


def make_split(n: int, seed: int, hw: tuple[int, int] = HW, shift: int = 0) -> SplitArrays:
    """Class c has the gaze on the c-th third of the image and a bright blob on the
    (c + shift)-th, so with shift 0 both tasks are learnable and what is learnt fails on a split
    with another shift; pixel noise makes every image different."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 3
    rng.shuffle(labels)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    centres = [(h * (2 * c + 1) / 6, w / 2) for c in range(3)]
    blobs = np.stack(
        [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2)) for cy, cx in centres]
    )
    images = 0.6 * blobs[(labels + shift) % 3] + 0.4 * rng.random((n, h, w))
    maps = blobs[labels] + 1e-3
    return SplitArrays(
        images=np.round(images.clip(0, 1) * IMAGE_SCALE).astype(np.uint16),
        maps=(maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float16),
        labels=labels,
        dicom_ids=tuple(f"img{i}" for i in range(n)),
    )


@pytest.fixture(scope="module")
def splits() -> tuple[SplitArrays, SplitArrays]:
    return make_split(24, seed=1), make_split(12, seed=2)


@pytest.fixture
def loaders(
    splits: tuple[SplitArrays, SplitArrays],
) -> Callable[[int], tuple[BatchLoader, BatchLoader]]:
    def make(batch_size: int = 8) -> tuple[BatchLoader, BatchLoader]:
        train, val = splits
        return BatchLoader(train, batch_size, shuffle=True, seed=5), BatchLoader(val, batch_size)

    return make


@pytest.fixture
def misleading_loaders(splits: tuple[SplitArrays, SplitArrays]) -> tuple[BatchLoader, BatchLoader]:
    """The usual training batches; a validation split whose loss grows as training learns."""
    return BatchLoader(splits[0], 8, shuffle=True, seed=5), BatchLoader(
        make_split(12, 2, shift=1), 8
    )


@pytest.fixture
def toy() -> ToyNet:
    torch.manual_seed(0)
    return ToyNet()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Small convolutions on a shared, busy CPU are faster on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
