"""Training losses: saliency KL, cross-entropy, the uncertainty-weighted joint loss, and the two
contrastive pretraining losses (supervised triplet, as the paper's authors train; SupCon, the
standard alternative).

Every loss returns a 0-d float32 tensor. Inputs may come out of a mixed-precision forward pass
(bfloat16 / float16): each loss casts them to float32 and turns autocast off for its own arithmetic,
because sums and log-sum-exps over a batch or an image lose too much in half precision.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@contextmanager
def _float32_region(like: Tensor) -> Iterator[None]:
    """Disable autocast on ``like``'s device so that float32 inputs stay float32 inside."""
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield


def _check_labels(labels: Tensor, batch: int, name: str) -> None:
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(
            f"labels: expected shape ({batch},) to match {name}, got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels: expected an integer tensor, got {labels.dtype}")


def saliency_kl(log_pred: Tensor, target: Tensor) -> Tensor:
    """KL(target || pred) between gaze maps, averaged over the batch.

    Args:
        log_pred: (B, 1, H, W) predicted log-probabilities (a log-softmax over the H*W pixels of
            each image).
        target: (B, 1, H, W) non-negative ground-truth maps, any scale; each is divided by its
            own sum here, so a max-normalised map and a sum-normalised one give the same loss.

    Returns:
        0-d tensor: ``sum_pixels t * (log t - log_pred)`` per image (``0 * log 0 = 0``), summed
        over the batch and divided by B, i.e. ``F.kl_div(..., reduction="batchmean")`` on the
        flattened maps.

    Raises:
        ValueError: shapes differ, the target has a negative value, or a target map is all zero
            (it has no distribution to match; the message names the image index).
    """
    if log_pred.shape != target.shape or log_pred.ndim != 4 or log_pred.shape[1] != 1:
        raise ValueError(
            "saliency_kl: expected log_pred and target of the same shape (B, 1, H, W), got "
            f"{tuple(log_pred.shape)} and {tuple(target.shape)}"
        )
    with _float32_region(log_pred):
        log_q = log_pred.float().flatten(1)
        t = target.float().flatten(1)
        if bool((t < 0).any()):
            raise ValueError("saliency_kl: target has negative values")
        sums = t.sum(dim=1, keepdim=True)
        empty = (sums <= 0).flatten().nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"saliency_kl: target map is all zero for image(s) {empty}")
        return F.kl_div(log_q, t / sums, reduction="batchmean")


def classification_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of class logits, mean over the batch, no class weights.

    Args:
        logits: (B, C) unnormalised class scores.
        labels: (B,) integer class indices in [0, C).

    Returns:
        0-d tensor: mean over the batch of ``-log softmax(logits)[label]``.
    """
    if logits.ndim != 2:
        raise ValueError(f"classification_ce: expected logits (B, C), got {tuple(logits.shape)}")
    _check_labels(labels, logits.shape[0], "logits")
    with _float32_region(logits):
        return F.cross_entropy(logits.float(), labels.long())


class UncertaintyWeightedLoss(nn.Module):
    """The paper's joint loss with learnt task uncertainties.

    ``CE / sigma_c**2 + log(sigma_c + 1) + KL / (2 sigma_s**2) + log(sigma_s + 1)`` with
    ``sigma = exp(s)``. ``s_c`` is a parameter initialised at 0 (sigma_c = 1); ``s_s`` is fixed at
    0 (sigma_s = 1, the paper) unless ``learn_saliency_sigma`` makes it a parameter too.
    ``log(exp(s) + 1)`` is computed as ``softplus(s)``, which stays finite for any ``s``.
    """

    def __init__(self, *, learn_saliency_sigma: bool = False) -> None:
        super().__init__()
        self.log_sigma_c = nn.Parameter(torch.zeros(()))
        if learn_saliency_sigma:
            self.log_sigma_s = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_sigma_s", torch.zeros(()))

    def forward(self, ce: Tensor, kl: Tensor) -> Tensor:
        """Combine the two task losses.

        Args:
            ce: 0-d classification loss (``classification_ce``).
            kl: 0-d saliency loss (``saliency_kl``).

        Returns:
            0-d float32 joint loss.
        """
        if ce.ndim != 0 or kl.ndim != 0:
            raise ValueError(
                f"UncertaintyWeightedLoss: expected 0-d losses, got shapes {tuple(ce.shape)} "
                f"and {tuple(kl.shape)}"
            )
        with _float32_region(ce):
            s_c = self.log_sigma_c.float()
            s_s = self.log_sigma_s.float()
            return (
                ce.float() * torch.exp(-2.0 * s_c)
                + F.softplus(s_c)
                + kl.float() * 0.5 * torch.exp(-2.0 * s_s)
                + F.softplus(s_s)
            )

    @property
    def sigmas(self) -> dict[str, float]:
        """Current ``{"sigma_c": ..., "sigma_s": ...}`` as plain floats (for logging)."""
        return {
            "sigma_c": float(self.log_sigma_c.detach().exp()),
            "sigma_s": float(self.log_sigma_s.detach().exp()),
        }


TripletReduction = Literal["mean", "sum"]


def supervised_triplet_loss(
    embeddings: Tensor,
    labels: Tensor,
    margin: float = 1.0,
    reduction: TripletReduction = "mean",
) -> Tensor:
    """Batch-all supervised triplet loss with Euclidean distances.

    Every (anchor a, positive p, negative n) of the batch with ``label[p] == label[a]``,
    ``p != a`` and ``label[n] != label[a]`` is a valid triplet; its loss is
    ``max(0, ||e_a - e_p|| - ||e_a - e_n|| + margin)``. The B x B x B triplet tensor is built by
    broadcasting.

    Args:
        embeddings: (B, D) features; (B, *) is flattened to (B, D) (e.g. DenseNet denseblock4
            maps).
        labels: (B,) integer classes.
        margin: hinge margin.
        reduction: ``"mean"`` over all valid triplets (those with zero loss included) or their
            ``"sum"``.

    Returns:
        0-d tensor. With no valid triplet (one class, or no class with two members) it is 0,
        still attached to the graph so that ``backward()`` works and gives zero gradients.
    """
    _check_reduction(reduction)
    if embeddings.ndim < 2:
        raise ValueError(
            f"supervised_triplet_loss: expected embeddings (B, D), got {tuple(embeddings.shape)}"
        )
    _check_labels(labels, embeddings.shape[0], "embeddings")
    with _float32_region(embeddings):
        x = embeddings.float().flatten(1)
        # Direct differences rather than the |a|^2 + |b|^2 - 2ab expansion: exact for close points
        # in high dimension, and the backward pass of cdist gives 0, not NaN, at distance 0.
        dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
        positive, negative = _triplet_masks(labels)
        valid = positive[:, :, None] & negative[:, None, :]
        hinge = F.relu(dist[:, :, None] - dist[:, None, :] + margin)
        total = torch.where(valid, hinge, torch.zeros_like(hinge)).sum()
        return total if reduction == "sum" else total / valid.sum().clamp_min(1)


def feature_map_triplet_loss(
    maps: Tensor,
    labels: Tensor,
    margin: float = 1.0,
    reduction: TripletReduction = "sum",
    eps: float = 1e-6,
) -> Tensor:
    """Batch-all supervised triplet loss on feature maps, in the authors' formulation.

    The authors apply ``nn.TripletMarginLoss(margin, p=2)`` to each (anchor, positive, negative)
    of 4-D ``denseblock4`` maps: ``pairwise_distance`` then measures ``||a - p + eps||_2`` along
    the LAST axis only (the width), one distance per channel and row, and the hinge
    ``max(0, margin + d(a, p) - d(a, n))`` is averaged over channels and rows. They sum that over
    the batch's triplets. Triplets are as in :func:`supervised_triplet_loss`. Computed anchor by
    anchor (B iterations; each vectorised over its positives x negatives), which keeps memory at
    B x C x h x w per anchor instead of B^3.

    Args:
        maps: (B, C, h, w) features (DenseNet denseblock4).
        labels: (B,) integer classes.
        margin: hinge margin.
        reduction: ``"sum"`` over the triplets (the authors) or their ``"mean"``.
        eps: added to the difference before the norm, as ``pairwise_distance`` does.

    Returns:
        0-d float32 tensor; 0 (attached to the graph) without a valid triplet.
    """
    _check_reduction(reduction)
    if maps.ndim < 3:
        raise ValueError(
            f"feature_map_triplet_loss: expected maps (B, ..., w), got {tuple(maps.shape)}"
        )
    _check_labels(labels, maps.shape[0], "maps")
    with _float32_region(maps):
        x = maps.float()
        positive, negative = _triplet_masks(labels)
        total = x.sum() * 0.0
        count = 0
        for anchor in range(x.shape[0]):
            positives, negatives = positive[anchor], negative[anchor]
            if not (positives.any() and negatives.any()):
                continue
            # (B, C, h): one distance per channel and row, along the width.
            dist = torch.linalg.vector_norm(x[anchor] - x + eps, dim=-1).flatten(1)
            hinge = F.relu(margin + dist[positives][:, None] - dist[negatives][None, :])
            total = total + hinge.mean(dim=-1).sum()
            count += int(positives.sum()) * int(negatives.sum())
        return total if reduction == "sum" else total / max(count, 1)


def _triplet_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """(B, B) masks: ``positive[a, p]`` same class and p != a; ``negative[a, n]`` other class."""
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    return same & not_self, ~same


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"triplet reduction must be 'mean' or 'sum', got {reduction!r}")


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.07) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, the L_out form), one view per image.

    With ``z`` the L2-normalised features and ``P(i)`` the other images of anchor i's class::

        L_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / T) / sum_{a != i} exp(z_i.z_a / T) )

    Args:
        features: (B, D) projected features (the output of ``ProjectionHead``); normalised here.
        labels: (B,) integer classes.
        temperature: T.

    Returns:
        0-d tensor: the mean of ``L_i`` over anchors that have at least one positive; anchors
        alone in their class are left out. 0 (attached to the graph) when no anchor has one.
    """
    if features.ndim != 2:
        raise ValueError(f"supcon_loss: expected features (B, D), got {tuple(features.shape)}")
    _check_labels(labels, features.shape[0], "features")
    if temperature <= 0:
        raise ValueError(f"supcon_loss: temperature must be > 0, got {temperature}")
    with _float32_region(features):
        z = F.normalize(features.float(), dim=1)
        logits = z @ z.T / temperature
        self_mask = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
        log_denominator = torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1)
        log_prob = logits - log_denominator[:, None]
        positives = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = positives.sum(dim=1)
        pos_sum = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
        has_pos = n_pos > 0
        per_anchor = -pos_sum / n_pos.clamp_min(1)
        return torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor)).sum() / (
            has_pos.sum().clamp_min(1)
        )


class ProjectionHead(nn.Module):
    """SupCon projection MLP: Linear(in_dim, hidden) -> ReLU -> Linear(hidden, out_dim).

    Maps pooled encoder features (B, in_dim) to (B, out_dim); the caller pools (GAP) first.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)
