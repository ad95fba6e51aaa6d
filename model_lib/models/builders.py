"""Public builders: one keyword-only function per architecture, and ``build_model`` from a config.

Constructors do no I/O; ``build_model`` is where pretrained DenseNet weights come in, from the
source the config names (torchvision's ImageNet file through torch.hub's cache by default; see
:mod:`model_lib.models.pretrained`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from torch import nn

from model_lib.config import DENSENET_ARCHS, ModelConfig
from model_lib.models.decoder import UNetDecoder
from model_lib.models.encoders import (
    UNET_CHANNELS,
    DenseNetEncoder,
    DenseNetVariant,
    InputNorm,
    PlainUNetEncoder,
    ResSEEncoder,
)
from model_lib.models.heads import DenseNetHead, FusionClassifier, SaliencyHead
from model_lib.models.networks import ClassifierName, DualEncoderUNet, MTUNet
from model_lib.models.weights import describe_init, load_pretrained_densenet

logger = logging.getLogger(__name__)

MODEL_PRESETS: dict[str, ModelConfig] = {"paper": ModelConfig()}
"""Named model configurations; ``paper`` is the paper's network at 320 x 256."""


def scaled_channels(width: float) -> tuple[int, ...]:
    """The UNet stage widths 64 .. 1024 times ``width``, rounded, at least 1."""
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(1, round(c * width)) for c in UNET_CHANNELS)


def _dual(
    encoder: nn.Module,
    backbone: DenseNetVariant,
    num_classes: int,
    dropout: float,
    classifier: ClassifierName,
    input_norm: InputNorm,
) -> DualEncoderUNet:
    densenet = DenseNetEncoder(backbone, input_norm=input_norm)
    decoder = UNetDecoder(encoder.out_channels, densenet.out_channels[-1])
    return DualEncoderUNet(
        densenet=densenet,
        encoder=encoder,
        decoder=decoder,
        saliency_head=SaliencyHead(decoder.out_channels),
        densenet_head=DenseNetHead(densenet.num_features, num_classes),
        fusion_classifier=FusionClassifier(
            densenet.num_features, decoder.out_channels, num_classes=num_classes, dropout=dropout
        ),
        classifier=classifier,
    )


def _single(encoder: nn.Module, num_classes: int, dropout: float) -> MTUNet:
    *skips, bottleneck = encoder.out_channels
    # A standard UNet decoder: each level as wide as its skip.
    decoder = UNetDecoder(skips, bottleneck, decoder_channels=skips)
    return MTUNet(
        encoder=encoder,
        decoder=decoder,
        saliency_head=SaliencyHead(decoder.out_channels),
        fusion_classifier=FusionClassifier(
            bottleneck, decoder.out_channels, num_classes=num_classes, dropout=dropout
        ),
    )


def dual_unet(
    *,
    backbone: DenseNetVariant = "densenet201",
    width: float = 1.0,
    num_classes: int = 3,
    dropout: float = 0.25,
    se_reduction: int = 16,
    classifier: ClassifierName = "fusion",
    input_norm: InputNorm = "imagenet",
) -> DualEncoderUNet:
    """The paper's network: DenseNet + Res+SE encoders, randomly initialised."""
    encoder = ResSEEncoder(1, scaled_channels(width), se_reduction)
    return _dual(encoder, backbone, num_classes, dropout, classifier, input_norm)


def plain_unet(
    *,
    backbone: DenseNetVariant = "densenet201",
    width: float = 1.0,
    num_classes: int = 3,
    dropout: float = 0.25,
    classifier: ClassifierName = "fusion",
    input_norm: InputNorm = "imagenet",
) -> DualEncoderUNet:
    """Ablation: the paper's network with a plain UNet encoder in place of the Res+SE one."""
    encoder = PlainUNetEncoder(1, scaled_channels(width))
    return _dual(encoder, backbone, num_classes, dropout, classifier, input_norm)


def res_se_unet(
    *, width: float = 1.0, num_classes: int = 3, dropout: float = 0.25, se_reduction: int = 16
) -> MTUNet:
    """Ablation: the Res+SE encoder alone (no DenseNet), MT-UNet decoder and heads."""
    return _single(ResSEEncoder(1, scaled_channels(width), se_reduction), num_classes, dropout)


def mt_unet(*, width: float = 1.0, num_classes: int = 3, dropout: float = 0.25) -> MTUNet:
    """MT-UNet baseline (Zhu et al. 2022): one plain UNet encoder, 4 up-stages, fused classifier."""
    return _single(PlainUNetEncoder(1, scaled_channels(width)), num_classes, dropout)


_BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "dual_unet": lambda c: dual_unet(
        backbone=c.backbone,
        width=c.width,
        num_classes=c.num_classes,
        dropout=c.dropout,
        se_reduction=c.se_reduction,
        classifier=c.classifier,
        input_norm=c.input_norm,
    ),
    "plain_unet": lambda c: plain_unet(
        backbone=c.backbone,
        width=c.width,
        num_classes=c.num_classes,
        dropout=c.dropout,
        classifier=c.classifier,
        input_norm=c.input_norm,
    ),
    "res_se_unet": lambda c: res_se_unet(
        width=c.width, num_classes=c.num_classes, dropout=c.dropout, se_reduction=c.se_reduction
    ),
    "mt_unet": lambda c: mt_unet(width=c.width, num_classes=c.num_classes, dropout=c.dropout),
}


def resolve_model_config(config: ModelConfig | str) -> ModelConfig:
    """A ModelConfig as given, or the preset of that name."""
    if isinstance(config, ModelConfig):
        return config
    if config not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {config!r}; known: {sorted(MODEL_PRESETS)}")
    return MODEL_PRESETS[config]


def build_model(config: ModelConfig | str, *, pretrained: bool = True) -> nn.Module:
    """The network a config (or preset name) describes, on CPU, in train mode.

    With ``pretrained`` (the default), the DenseNet branch starts from
    ``config.pretrained_weights`` (``imagenet``: torchvision's ImageNet file, from torch.hub's
    cache or downloaded there; or a local path or URI), hash-checked; null is random
    initialisation, which is logged as such. Pass ``pretrained=False`` to get the architecture
    only, when trained weights are loaded next (evaluation, serving, a later stage).

    Raises:
        WeightsUnavailable (a FileNotFoundError): the weights are neither on this machine nor
            reachable; the one-line message says how to get them.
        ValueError: a weights file with the wrong hash or of another variant (names the file).
    """
    cfg = resolve_model_config(config)
    model = _BUILDERS[cfg.arch](cfg)
    if pretrained and cfg.arch in DENSENET_ARCHS:
        if cfg.pretrained_weights is None:
            logger.info("%s: %s (model.pretrained_weights is null)", cfg.backbone,
                        describe_init(cfg))  # fmt: skip
        else:
            load_pretrained_densenet(model.densenet, cfg.pretrained_weights)
    return model
