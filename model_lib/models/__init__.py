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
from model_lib.models.weights import load_pretrained_densenet

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
    "ResSEEncoder",
    "SaliencyHead",
    "UNetDecoder",
    "build_model",
    "densenet_grad_cam",
    "dual_unet",
    "load_pretrained_densenet",
    "mt_unet",
    "plain_unet",
    "res_se_unet",
]
