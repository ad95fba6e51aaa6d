"""The multi-task networks, each composed from parts passed in (encoders, decoder, heads).

Both take (B, 1, H, W) float images in [0, 1] and return a dict of named outputs; an output the
network does not have is an absent key, never a placeholder.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from model_lib.models.decoder import UNetDecoder
from model_lib.models.encoders import DenseNetEncoder
from model_lib.models.heads import DenseNetHead, FusionClassifier, SaliencyHead

ClassifierName = Literal["densenet", "fusion"]


def _check_input(x: Tensor, min_side: int) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, H, W) image batch, got shape {tuple(x.shape)}")
    if min(x.shape[-2:]) < min_side:
        raise ValueError(f"input {tuple(x.shape[-2:])} is smaller than {min_side} px on a side")


def _check_skips(decoder: UNetDecoder, skip_channels: tuple[int, ...], bottleneck: int) -> None:
    if decoder.skip_channels != skip_channels or decoder.bottleneck_channels != bottleneck:
        raise ValueError(
            f"decoder expects skips {decoder.skip_channels} and a {decoder.bottleneck_channels}-ch "
            f"bottleneck; the encoders give skips {skip_channels} and a {bottleneck}-ch bottleneck"
        )


class DualEncoderUNet(nn.Module):
    """The paper's network: DenseNet encoder for the bottleneck and the classifiers, a second
    encoder (Res+SE; plain UNet in the ablation) for the skips, one UNet decoder, two heads.

    Parameter groups, by attribute, for the training stages:

    - ``densenet`` (:class:`DenseNetEncoder`) and ``densenet_head`` (:class:`DenseNetHead`,
      Linear(1920, 3) on GAP(relu(norm5))): stage 1a trains ``densenet``; stage 1b both.
    - ``encoder`` (the skip encoder), ``decoder``, ``saliency_head``: stage 2, with ``densenet``
      frozen (keep it in eval mode so its batch-norm statistics stay frozen too).
    - ``fusion_classifier`` (GAP(relu(norm5)) ++ GAP(d1) -> 64 -> 3, relu(norm5) as torchvision's
      forward leaves it and the authors' hook reads it): stage 3, everything else frozen.

    ``forward`` returns ``logits`` (B, num_classes) from the head named by ``classifier``,
    ``saliency`` (B, 1, H, W) log-probabilities over the pixels, ``densenet_logits`` and
    ``fusion_logits`` (B, num_classes), and ``embedding`` (B, densenet.num_features): GAP of
    denseblock4, for contrastive pretraining.
    """

    def __init__(
        self,
        densenet: DenseNetEncoder,
        encoder: nn.Module,
        decoder: UNetDecoder,
        saliency_head: SaliencyHead,
        densenet_head: DenseNetHead,
        fusion_classifier: FusionClassifier,
        classifier: ClassifierName = "fusion",
    ) -> None:
        super().__init__()
        _check_skips(decoder, tuple(encoder.out_channels), densenet.out_channels[-1])
        if classifier not in ("densenet", "fusion"):
            raise ValueError(f"classifier must be 'densenet' or 'fusion', got {classifier!r}")
        self.densenet = densenet
        self.encoder = encoder
        self.decoder = decoder
        self.saliency_head = saliency_head
        self.densenet_head = densenet_head
        self.fusion_classifier = fusion_classifier
        self.classifier = classifier

    def forward_densenet(self, x: Tensor) -> dict[str, Tensor]:
        """The DenseNet branch alone (stages 1a/1b, Grad-CAM), skipping the full-resolution UNet.

        (B, 1, H, W) -> ``densenet_logits`` (B, num_classes), ``embedding`` (B, num_features),
        ``denseblock4`` (B, num_features, H/32, W/32): the map ``embedding`` pools, which the
        authors' triplet loss compares directly.
        """
        _check_input(x, self.densenet.reductions[-1])
        deepest = self.densenet(x)[-1]
        return {
            "densenet_logits": self.densenet_head(self.densenet.head_features(deepest)),
            "embedding": deepest.mean(dim=(2, 3)),
            "denseblock4": deepest,
        }

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        _check_input(x, self.densenet.reductions[-1])
        deepest = self.densenet(x)[-1]
        head_features = self.densenet.head_features(deepest)
        d1 = self.decoder(self.encoder(x), deepest)
        out = {
            "saliency": self.saliency_head(d1),
            "densenet_logits": self.densenet_head(head_features),
            "fusion_logits": self.fusion_classifier(head_features, d1),
            "embedding": deepest.mean(dim=(2, 3)),
        }
        return {"logits": out[f"{self.classifier}_logits"], **out}


class MTUNet(nn.Module):
    """A single-encoder multi-task UNet (MT-UNet, Zhu et al. 2022; with a Res+SE encoder, the
    paper's "Res+SE only" ablation).

    The encoder's last stage is the bottleneck, the others are the skips. Parameter groups:
    ``encoder``, ``decoder``, ``saliency_head``, ``fusion_classifier`` (GAP(bottleneck) ++ GAP(d1)
    -> 64 -> classes). ``forward`` returns ``logits`` (B, num_classes) and ``saliency``
    (B, 1, H, W) log-probabilities over the pixels.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: UNetDecoder,
        saliency_head: SaliencyHead,
        fusion_classifier: FusionClassifier,
    ) -> None:
        super().__init__()
        channels = tuple(encoder.out_channels)
        _check_skips(decoder, channels[:-1], channels[-1])
        self.encoder = encoder
        self.decoder = decoder
        self.saliency_head = saliency_head
        self.fusion_classifier = fusion_classifier

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        _check_input(x, self.encoder.reductions[-1])
        *skips, bottleneck = self.encoder(x)
        d1 = self.decoder(skips, bottleneck)
        return {
            "logits": self.fusion_classifier(bottleneck, d1),
            "saliency": self.saliency_head(d1),
        }
