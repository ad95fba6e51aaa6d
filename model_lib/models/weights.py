"""Loading DenseNet weights from a local file. Nothing is ever downloaded."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from torch import Tensor

from model_lib.models.encoders import DenseNetEncoder

# Old torchvision checkpoints (including the published ImageNet ones) name dense-layer parts
# 'norm.1', 'conv.2', ...; current modules are 'norm1', 'conv2'. They also predate batch norm's
# 'num_batches_tracked', which batch norm fills in itself when absent.
_OLD_DENSE_LAYER_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var))$"
)

_BATCHES = ".num_batches_tracked"


def local_weights_path(location: str | Path) -> Path:
    """A plain path or a ``file://`` URI as a Path; any other scheme is refused (no download)."""
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(
                f"{text}: file:// URIs must name a local file (host {parsed.netloc!r})"
            )
        return Path(url2pathname(parsed.path))
    # A one-letter scheme is a Windows drive, not a URL.
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(
            f"{text}: only local paths and file:// URIs are accepted; weights are never downloaded"
        )
    return Path(text)


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


def load_pretrained_densenet(encoder: DenseNetEncoder, location: str | Path) -> None:
    """Load a torchvision DenseNet state dict (``features.*`` keys) from a local file into encoder.

    Raises FileNotFoundError when the file is missing and ValueError, naming the file, when it is
    not a state dict of the encoder's DenseNet variant (missing, extra or mis-shaped tensors).
    """
    path = local_weights_path(location)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained DenseNet weights not found: {path} (pretrained_weights must be a local "
            "file; set it to null for random initialisation)"
        )
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    state = torchvision_densenet_keys(loaded)
    expected = encoder.state_dict()
    missing = sorted(k for k in expected.keys() - state.keys() if not k.endswith(_BATCHES))
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"{path}: not a torchvision {encoder.variant} state dict: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}"
        )
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(value.shape)}, {encoder.variant} expects "
                f"{tuple(expected[key].shape)}"
            )
    encoder.load_state_dict(state)
