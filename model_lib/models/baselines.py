"""Saliency/classification baselines that answer like the networks: ``{"logits", "saliency"}``.

- ``CenterPriorBaseline``: the mean training gaze map for every image, and the training class
  frequencies as the class scores. What any model must beat.
- ``GradCAM``: class-activation maps of a classifier (the stage-1b DenseNet in the paper) read as a
  gaze prediction.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_lib.models.networks import DualEncoderUNet

_MASS_FLOOR = 1e-6
"""Share of probability mass spread evenly over all pixels, so no log-probability is -inf."""


def to_log_probability_map(maps: Tensor) -> Tensor:
    """Non-negative maps (B, 1, H, W) -> log of each map normalised to sum 1, float32.

    A small uniform floor keeps every pixel's probability above zero (KL against a target with
    mass there stays finite); an all-zero map becomes the uniform map.
    """
    maps = maps.float().clamp_min(0)
    n_pixels = maps[0].numel()
    total = maps.sum(dim=(1, 2, 3), keepdim=True)
    safe_total = total.clamp_min(torch.finfo(torch.float32).tiny)
    prob = torch.where(total > 0, maps / safe_total, 1.0 / n_pixels)
    return ((1 - _MASS_FLOOR) * prob + _MASS_FLOOR / n_pixels).log()


class CenterPriorBaseline(nn.Module):
    """The mean sum-normalised training map as everyone's saliency, the class prior as logits.

    Fit with :meth:`fit`. ``forward`` on (B, 1, H, W) returns ``logits`` (B, K), the log prior
    (Laplace-smoothed so no class gets probability 0), and ``saliency`` (B, 1, H, W), the log of the
    mean map resized (bilinear) to H x W.
    """

    def __init__(self, mean_map: Tensor, class_prior: Tensor) -> None:
        super().__init__()
        if mean_map.ndim != 2:
            raise ValueError(f"mean_map must be (H, W), got shape {tuple(mean_map.shape)}")
        self.register_buffer("mean_map", mean_map.float())
        self.register_buffer("class_prior", class_prior.float())

    @classmethod
    def fit(cls, maps: np.ndarray, labels: np.ndarray, num_classes: int = 3) -> CenterPriorBaseline:
        """maps (N, H, W) or (N, 1, H, W), non-negative, each with positive mass; labels (N,) ints
        in [0, num_classes)."""
        maps = np.asarray(maps, dtype=np.float64)
        labels = np.asarray(labels)
        if maps.ndim == 4 and maps.shape[1] == 1:
            maps = maps[:, 0]
        if maps.ndim != 3 or len(maps) == 0:
            raise ValueError(
                f"maps: expected (N, H, W) or (N, 1, H, W) with N > 0, got {maps.shape}"
            )
        if labels.shape != (len(maps),):
            raise ValueError(
                f"labels: expected shape ({len(maps)},) to match maps, got {labels.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels: expected integer class indices, got dtype {labels.dtype}")
        bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
        if bad.size:
            raise ValueError(f"labels[{bad[0]}]: {labels[bad[0]]} is not in [0, {num_classes})")
        finite = np.isfinite(maps).all(axis=(1, 2))
        totals = np.where(finite, maps.sum(axis=(1, 2)), np.nan)
        bad = np.flatnonzero(~finite | (maps.min(axis=(1, 2)) < 0) | ~(totals > 0))
        if bad.size:
            raise ValueError(f"maps[{bad[0]}]: a gaze map must be finite, >= 0 and not all zero")
        mean_map = (maps / totals[:, None, None]).mean(axis=0)
        counts = np.bincount(labels, minlength=num_classes)
        prior = (counts + 1) / (len(labels) + num_classes)
        return cls(torch.from_numpy(mean_map), torch.from_numpy(prior))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        b, (h, w) = x.shape[0], x.shape[-2:]
        mean_map = self.mean_map[None, None]
        if mean_map.shape[-2:] != (h, w):
            mean_map = F.interpolate(mean_map, size=(h, w), mode="bilinear", align_corners=False)
        return {
            "logits": self.class_prior.log().expand(b, -1),
            "saliency": to_log_probability_map(mean_map).expand(b, -1, -1, -1),
        }


class GradCAM(nn.Module):
    """Grad-CAM (Selvaraju et al. 2017) of a classifier split into ``features`` and ``head``.

    ``features``: (B, 1, H, W) -> (B, C, h, w), the map Grad-CAM weighs; ``head``: that map ->
    (B, K) logits. The saliency of image b for class k is ReLU(sum_c alpha_c A_c) with alpha_c the
    spatial mean of d logit_k / d A_c, upsampled (bilinear) to H x W and returned as a
    log-probability map like the networks'. The class is ``target`` (B,) or else the predicted one.

    Only the head is differentiated (the feature map is a leaf), so it runs under ``no_grad`` and on
    frozen models. Use it in eval mode: batch statistics would couple the images of a batch.
    """

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor, target: Tensor | None = None) -> dict[str, Tensor]:
        with torch.no_grad():
            fmap = self.features(x)
        with torch.enable_grad():
            leaf = fmap.detach().requires_grad_(True)
            logits = self.head(leaf)
            chosen = logits.argmax(dim=1) if target is None else target.to(logits.device)
            score = logits.gather(1, chosen.view(-1, 1)).sum()
            (grads,) = torch.autograd.grad(score, leaf)
        alpha = grads.float().mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((alpha * leaf.detach().float()).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits.detach(), "saliency": to_log_probability_map(cam)}


class _DenseNetNorm5(nn.Module):
    """(B, 1, H, W) -> ``relu(norm5)``, the map the DenseNet classifier pools: what Grad-CAM
    weighs."""

    def __init__(self, model: DualEncoderUNet) -> None:
        super().__init__()
        self.densenet = model.densenet

    def forward(self, x: Tensor) -> Tensor:
        return self.densenet.head_features(self.densenet(x)[-1])


def densenet_grad_cam(model: DualEncoderUNet) -> GradCAM:
    """Grad-CAM of the model's DenseNet classifier on its ``relu(norm5)`` map (shares the
    weights)."""
    return GradCAM(_DenseNetNorm5(model), model.densenet_head)
