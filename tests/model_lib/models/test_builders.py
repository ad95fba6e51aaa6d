from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from model_lib.config import ModelConfig
from model_lib.models import (
    MODEL_PRESETS,
    DualEncoderUNet,
    MTUNet,
    PlainUNetEncoder,
    ResSEEncoder,
    build_model,
)
from model_lib.models.builders import scaled_channels
from tests.model_lib.models.cases import tiny_config

ARCH_PARTS = [
    ("dual_unet", DualEncoderUNet, ResSEEncoder),
    ("plain_unet", DualEncoderUNet, PlainUNetEncoder),
    ("res_se_unet", MTUNet, ResSEEncoder),
    ("mt_unet", MTUNet, PlainUNetEncoder),
]


@pytest.mark.parametrize(("arch", "network_cls", "encoder_cls"), ARCH_PARTS)
def test_every_arch_is_built_from_its_parts(
    arch: str, network_cls: type, encoder_cls: type
) -> None:
    cfg = tiny_config(arch, num_classes=4, dropout=0.5, se_reduction=2)
    with torch.device("meta"):
        model = build_model(cfg)
    assert type(model) is network_cls
    assert type(model.encoder) is encoder_cls
    assert model.encoder.out_channels == (8, 16, 32, 64, 128)
    assert model.fusion_classifier.mlp[1].p == 0.5
    assert model.fusion_classifier.mlp[-1].out_features == 4
    if encoder_cls is ResSEEncoder:
        assert model.encoder.stages[-1][1].fc[0].out_features == 128 // 2
    if network_cls is DualEncoderUNet:
        assert model.densenet.variant == "densenet121"
        assert model.decoder.decoder_channels == (8, 8, 16, 32, 64)
        assert model.densenet_head.fc.out_features == 4
        # GAP(norm5) ++ GAP(d1).
        assert model.fusion_classifier.mlp[0].in_features == 1024 + 8
    else:
        assert model.decoder.decoder_channels == (8, 16, 32, 64)
        assert model.fusion_classifier.mlp[0].in_features == 128 + 8


def test_paper_preset_is_the_default_config() -> None:
    assert MODEL_PRESETS["paper"] == ModelConfig()
    cfg = ModelConfig()
    assert (cfg.arch, cfg.backbone, cfg.width, cfg.input_hw) == (
        "dual_unet",
        "densenet201",
        1.0,
        (320, 256),
    )
    assert (cfg.num_classes, cfg.dropout, cfg.se_reduction, cfg.classifier) == (
        3,
        0.25,
        16,
        "fusion",
    )


def test_unknown_preset_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown model preset 'papr'; known: \\['paper'\\]"):
        build_model("papr")


@pytest.mark.parametrize(
    ("width", "channels"),
    [(1.0, (64, 128, 256, 512, 1024)), (0.125, (8, 16, 32, 64, 128)), (0.01, (1, 1, 3, 5, 10))],
)
def test_scaled_channels(width: float, channels: tuple[int, ...]) -> None:
    assert scaled_channels(width) == channels


def test_missing_pretrained_weights_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "densenet121-imagenet.pth"
    cfg = tiny_config("dual_unet", pretrained_weights=str(missing))
    with torch.device("meta"), pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        build_model(cfg)


def test_pretrained_weights_are_loaded_by_the_builder(tmp_path: Path) -> None:
    with torch.device("meta"):
        source = build_model(tiny_config("plain_unet"))
    source.densenet.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in source.densenet.state_dict().values():
            if tensor.is_floating_point():
                tensor.normal_()
            else:
                tensor.fill_(5)
    path = tmp_path / "w.pth"
    torch.save(source.densenet.state_dict(), path)
    model = build_model(tiny_config("plain_unet", pretrained_weights=path.as_uri()))
    for key, value in model.densenet.state_dict().items():
        assert torch.equal(value, source.densenet.state_dict()[key]), key


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"arch": "unet"}, "arch"),
        ({"backbone": "densenet169"}, "backbone"),
        ({"width": 0}, "width"),
        ({"widht": 0.5}, "widht"),
        ({"arch": "mt_unet", "classifier": "densenet"}, "needs a DenseNet branch"),
        ({"arch": "res_se_unet", "pretrained_weights": "w.pth"}, "has no DenseNet"),
        ({"input_hw": (31, 256)}, "below 32 px"),
        ({"arch": "mt_unet", "input_hw": (15, 64)}, "below 16 px"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_model_config_rejects(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        ModelConfig(**fields)


def test_model_config_is_frozen() -> None:
    cfg = ModelConfig()
    with pytest.raises(ValidationError):
        cfg.width = 2.0  # type: ignore[misc]
