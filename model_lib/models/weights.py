"""Loading torchvision DenseNet weights into the DenseNet branch, from the file
:mod:`model_lib.models.pretrained` resolves (torch.hub's cache, a download, a local file), after
checking that it is a state dict of the branch's variant."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from model_lib.config import DENSENET_ARCHS, ModelConfig
from model_lib.models.encoders import DenseNetEncoder
from model_lib.models.pretrained import RANDOM_INIT, PretrainedWeights, resolve_pretrained

logger = logging.getLogger(__name__)

# Old torchvision checkpoints (including the published ImageNet ones) name dense-layer parts
# 'norm.1', 'conv.2', ...; current modules are 'norm1', 'conv2'. They also predate batch norm's
# 'num_batches_tracked', which batch norm fills in itself when absent.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)

_BATCHES = ".num_batches_tracked"


def torchvision_densenet_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A torchvision DenseNet state dict with old-style keys renamed and the classifier dropped.

    The 1000-class ImageNet ``classifier`` does not fit a 3-class head; the network's own heads
    start fresh.
    """
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            continue
        match = _OLD_DENSE_LAYER_KEY.match(key)
        renamed[match.group(1) + match.group(2) if match else key] = value
    return renamed


def densenet_state(path: Path, expected: Mapping[str, Tensor], variant: str) -> dict[str, Tensor]:
    """The tensors of a torchvision DenseNet state dict file, renamed to ``expected``'s keys
    (an encoder's state dict, on any device: only names and shapes are compared).

    Raises:
        ValueError: naming the file, when it is not a state dict of ``variant`` (missing, extra
            or mis-shaped tensors).
    """
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = torchvision_densenet_keys(loaded)
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith(_BATCHES))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a torchvision {variant} state dict: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, {variant} expects "
                f"{tuple(expected[key].shape)}"
            )
    return state


def load_pretrained_densenet(encoder: DenseNetEncoder, source: str | Path) -> PretrainedWeights:
    """Load the torchvision DenseNet weights ``source`` names (``imagenet``, a local path, a
    ``file://`` or ``http(s)://`` URI; see :func:`~model_lib.models.pretrained.resolve_pretrained`)
    into ``encoder``; returns what was loaded (file, sha256).

    Raises:
        WeightsUnavailable (a FileNotFoundError): the file is missing or cannot be downloaded.
        WeightsHashMismatch / ValueError: naming the file, when its sha256 differs from the hash
            in its name or it is not a state dict of the encoder's variant.
    """
    weights = resolve_pretrained(str(source), encoder.variant)
    encoder.load_state_dict(densenet_state(weights.path, encoder.state_dict(), encoder.variant))
    logger.info("DenseNet branch starts from %s", weights.describe())
    return weights


def check_pretrained(config: ModelConfig) -> PretrainedWeights | None:
    """The weights a config's DenseNet branch starts from, fetched into torch.hub's cache if
    need be and checked as :func:`load_pretrained_densenet` checks them, without building the
    network; None for random initialisation (or no DenseNet). For failing fast before a run.

    Raises:
        The errors of :func:`load_pretrained_densenet`.
    """
    if config.arch not in DENSENET_ARCHS or config.pretrained_weights is None:
        return None
    weights = resolve_pretrained(config.pretrained_weights, config.backbone)
    with torch.device("meta"):
        expected = DenseNetEncoder(config.backbone).state_dict()
    densenet_state(weights.path, expected, config.backbone)
    return weights


def describe_init(config: ModelConfig) -> str:
    """How a config's DenseNet branch starts, for logs and run tags: the source it names, or
    ``random initialisation``; empty for an arch without DenseNet."""
    if config.arch not in DENSENET_ARCHS:
        return ""
    return config.pretrained_weights or RANDOM_INIT
