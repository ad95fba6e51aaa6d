from __future__ import annotations

import pytest
import torch
from torch import nn

from model_lib.models.decoder import UNetDecoder, UpBlock, shifted_decoder_channels
from model_lib.models.encoders import PlainUNetEncoder, ResSEEncoder


def test_shifted_channels_are_the_papers_decoder() -> None:
    assert shifted_decoder_channels((64, 128, 256, 512, 1024)) == (64, 64, 128, 256, 512)


def _convs(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_paper_decoder_levels() -> None:
    with torch.device("meta"):
        decoder = UNetDecoder((64, 128, 256, 512, 1024), 1920)
    # Deepest first: up(1920 -> 512) ++ e5 -> 512, ..., up(64 -> 64) ++ e1 -> 64.
    assert [_convs(b) for b in decoder.blocks] == [
        [(1920, 512), (512 + 1024, 512), (512, 512)],
        [(512, 256), (256 + 512, 256), (256, 256)],
        [(256, 128), (128 + 256, 128), (128, 128)],
        [(128, 64), (64 + 128, 64), (64, 64)],
        [(64, 64), (64 + 64, 64), (64, 64)],
    ]
    assert decoder.out_channels == 64


@pytest.mark.parametrize(
    ("encoder_cls", "channels", "hw"),
    [
        (ResSEEncoder, (3, 5, 7, 11, 13), (37, 23)),
        (PlainUNetEncoder, (4, 6, 8, 10, 12), (16, 48)),
        (ResSEEncoder, (2, 4, 6), (9, 7)),
    ],
)
def test_decoder_sized_from_the_encoders_reported_channels(
    encoder_cls: type, channels: tuple[int, ...], hw: tuple[int, int]
) -> None:
    encoder = encoder_cls(1, channels)
    *skip_channels, bottleneck_channels = encoder.out_channels
    decoder = UNetDecoder(skip_channels, bottleneck_channels, decoder_channels=skip_channels)
    *skips, bottleneck = encoder(torch.rand(2, 1, *hw))
    out = decoder(skips, bottleneck)
    assert out.shape == (2, skip_channels[0], *hw)
    out.sum().backward()
    assert all(p.grad is not None for p in decoder.parameters())


@pytest.mark.parametrize(
    ("low", "skip"), [((4, 3), (8, 6)), ((4, 3), (9, 7)), ((2, 1), (5, 3)), ((3, 3), (6, 7))]
)
def test_up_block_lands_on_the_skip_size(low: tuple[int, int], skip: tuple[int, int]) -> None:
    block = UpBlock(in_channels=6, skip_channels=2, out_channels=4)
    out = block(torch.randn(2, 6, *low), torch.randn(2, 2, *skip))
    assert out.shape == (2, 4, *skip)


def test_up_block_repeats_pixels_when_the_skip_is_twice_as_large() -> None:
    block = UpBlock(in_channels=1, skip_channels=1, out_channels=1)
    seen = []
    block.up.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    low = torch.arange(12.0).view(1, 1, 3, 4)
    block(low, torch.zeros(1, 1, 6, 8))
    expected = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(seen[0], expected)


def test_decoder_refuses_mismatched_levels() -> None:
    with pytest.raises(ValueError, match="3 levels"):
        UNetDecoder((4, 8), 16, decoder_channels=(4, 4, 4))
    decoder = UNetDecoder((4, 8), 16)
    with pytest.raises(ValueError, match="expected 2 skip"):
        decoder([torch.zeros(1, 4, 8, 8)], torch.zeros(1, 16, 2, 2))
