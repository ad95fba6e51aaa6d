"""Case tables shared by the model tests: every arch at tiny widths."""

from __future__ import annotations

from model_lib.config import ModelConfig

ARCHS: tuple[str, ...] = ("dual_unet", "plain_unet", "res_se_unet", "mt_unet")
WITH_DENSENET: frozenset[str] = frozenset({"dual_unet", "plain_unet"})
ODD_SIZES: tuple[tuple[int, int], ...] = ((72, 56), (100, 84))


def tiny_config(arch: str, **overrides: object) -> ModelConfig:
    """The smallest configuration of an arch: DenseNet121 (random weights) and 1/8 of the UNet
    widths."""
    fields: dict[str, object] = {
        "arch": arch,
        "backbone": "densenet121",
        "width": 0.125,
        "input_hw": (72, 56),
        "pretrained_weights": None,
    }
    return ModelConfig(**{**fields, **overrides})
