"""The networks: encoders, decoder and heads composed into the paper's dual-encoder multi-task UNet,
its ablations and baselines. Build them with :func:`build_model`."""

from model_lib.models.baselines import CenterPriorBaseline, GradCAM, densenet_grad_cam
from model_lib.models.builders import (
    MODEL_PRESETS,
    build_model,
    dual_unet,
    mt_unet,
    plain_unet,
    res_se_unet,
)
from model_lib.models.decoder import UNetDecoder
from model_lib.models.encoders import DenseNetEncoder, PlainUNetEncoder, ResSEEncoder
from model_lib.models.heads import DenseNetHead, FusionClassifier, SaliencyHead
from model_lib.models.networks import DualEncoderUNet, MTUNet
from model_lib.models.pretrained import (
    PretrainedWeights,
    WeightsHashMismatch,
    WeightsUnavailable,
    resolve_pretrained,
)
from model_lib.models.weights import check_pretrained, load_pretrained_densenet

__all__ = [
    "MODEL_PRESETS",
    "CenterPriorBaseline",
    "DenseNetEncoder",
    "DenseNetHead",
    "DualEncoderUNet",
    "FusionClassifier",
    "GradCAM",
    "MTUNet",
    "PlainUNetEncoder",
    "PretrainedWeights",
    "ResSEEncoder",
    "SaliencyHead",
    "UNetDecoder",
    "WeightsHashMismatch",
    "WeightsUnavailable",
    "build_model",
    "check_pretrained",
    "densenet_grad_cam",
    "dual_unet",
    "load_pretrained_densenet",
    "mt_unet",
    "plain_unet",
    "res_se_unet",
    "resolve_pretrained",
]
