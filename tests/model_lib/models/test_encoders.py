from __future__ import annotations

import pytest
import torch
from torchvision.models import densenet121

from model_lib.models.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DenseNetEncoder,
    PlainUNetEncoder,
    ResSEEncoder,
)
from model_lib.models.layers import ResidualBlock, SEBlock


@pytest.mark.parametrize("encoder_cls", [ResSEEncoder, PlainUNetEncoder])
@pytest.mark.parametrize(
    ("channels", "hw"),
    [((4, 8, 16, 32, 64), (33, 17)), ((3, 5, 7, 11, 13), (16, 16)), ((2, 3, 4), (5, 9))],
)
def test_unet_encoders_report_what_they_return(
    encoder_cls: type, channels: tuple[int, ...], hw: tuple[int, int]
) -> None:
    encoder = encoder_cls(1, channels)
    features = encoder(torch.rand(2, 1, *hw))
    assert encoder.out_channels == channels
    assert encoder.reductions == tuple(2**i for i in range(len(channels)))
    assert len(features) == len(channels)
    for f, c, r in zip(features, encoder.out_channels, encoder.reductions, strict=True):
        # 2x2 max-pools floor odd sizes.
        assert f.shape == (2, c, hw[0] // r, hw[1] // r)


def test_res_se_stage_is_a_residual_block_then_se() -> None:
    encoder = ResSEEncoder(1, (8, 16, 32, 64, 128), se_reduction=4)
    for stage, c in zip(encoder.stages, encoder.out_channels, strict=True):
        block, se = stage
        assert isinstance(block, ResidualBlock) and isinstance(se, SEBlock)
        assert se.fc[0].out_features == max(1, c // 4)


def test_densenet_encoder_reports_stage_shapes_at_odd_sizes() -> None:
    encoder = DenseNetEncoder("densenet121").eval()
    assert encoder.out_channels == (64, 256, 512, 1024, 1024)
    assert encoder.num_features == 1024
    with torch.no_grad():
        features = encoder(torch.rand(1, 1, 100, 84))
    # conv0 (stride 2) and pool0 round up, the transitions' average pools round down.
    expected_hw = [(50, 42), (25, 21), (12, 10), (6, 5), (3, 2)]
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, *s) for c, s in zip(encoder.out_channels, expected_hw, strict=True)
    ]


def test_densenet201_reports_1920_channels() -> None:
    with torch.device("meta"):
        encoder = DenseNetEncoder("densenet201")
    assert encoder.out_channels == (64, 256, 512, 1792, 1920)
    assert encoder.reductions == (2, 4, 8, 16, 32)


def test_densenet_encoder_feeds_torchvision_a_normalised_rgb_image() -> None:
    torch.manual_seed(0)
    encoder = DenseNetEncoder("densenet121").eval()
    reference = densenet121(weights=None).eval()
    reference.features.load_state_dict(encoder.features.state_dict())
    grey = torch.rand(2, 1, 64, 64)
    rgb = (grey.repeat(1, 3, 1, 1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        deepest = encoder(grey)[-1]
        # torchvision's features end at norm5; its forward applies the ReLU after them.
        torch.testing.assert_close(
            encoder.head_features(deepest), torch.relu(reference.features(rgb))
        )


def test_densenet_state_dict_has_torchvision_keys_only() -> None:
    with torch.device("meta"):
        encoder = DenseNetEncoder("densenet121")
        reference = densenet121(weights=None)
    expected = {k for k in reference.state_dict() if not k.startswith("classifier.")}
    assert set(encoder.state_dict()) == expected


def test_unknown_densenet_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="densenet169"):
        DenseNetEncoder("densenet169")  # type: ignore[arg-type]
