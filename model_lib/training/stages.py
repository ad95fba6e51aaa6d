"""Training stages as data: what each stage trains, its loss, its batch size and its schedule.

A stage names the model's top-level submodules it trains (``densenet``, ``densenet_head``,
``encoder``, ``decoder``, ``saliency_head``, ``fusion_classifier``); every other submodule is
frozen for the stage. :data:`PAPER_STAGES` is the paper's table of the multi-stage cooperative
learning. The functions below turn a spec into the stage's forward pass and loss.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from model_lib.losses import (
    ProjectionHead,
    UncertaintyWeightedLoss,
    classification_ce,
    feature_map_triplet_loss,
    saliency_kl,
    supcon_loss,
    supervised_triplet_loss,
)

LossName = Literal["triplet", "supcon", "ce_densenet", "kl", "ce_fusion", "joint"]
HeadName = Literal["densenet", "fusion"]

SALIENCY_LOSSES: frozenset[str] = frozenset({"kl", "joint"})
"""Losses whose stage reports validation saliency metrics."""
_HEAD_OF_LOSS: dict[str, str] = {"ce_densenet": "densenet", "ce_fusion": "fusion"}
_DENSENET_BRANCH_LOSSES: frozenset[str] = frozenset({"triplet", "supcon", "ce_densenet"})


class StageSpec(BaseModel):
    """One stage of the multi-stage cooperative learning.

    Optimisation follows the paper for every stage: Adam at ``lr`` without weight decay,
    ReduceLROnPlateau on the validation loss (``lr_factor``, ``lr_patience``), the best weights
    reloaded on each LR drop, a stop once the LR falls below ``min_lr`` or after
    ``early_stopping_patience`` epochs without a better validation loss.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="also a folder name")
    trains: tuple[str, ...] = Field(min_length=1, description="submodule attributes trained")
    loss: LossName
    batch_size: int = Field(ge=1)
    max_epochs: int = Field(ge=1)
    lr: float = Field(1e-4, gt=0)
    lr_factor: float = Field(0.1, gt=0, lt=1)
    lr_patience: int = Field(40, ge=0, description="ReduceLROnPlateau patience, in epochs")
    min_lr: float = Field(1e-8, ge=0, description="stop once the LR is below this")
    early_stopping_patience: int = Field(
        83,
        ge=1,
        description="epochs without a better validation loss before stopping; the authors' "
        "code uses 2 * lr_patience + 3",
    )
    head: HeadName | None = Field(
        None,
        description="class head whose validation accuracy/AUC the stage reports; the joint "
        "loss's cross-entropy reads it too",
    )
    branch: Literal["full", "densenet"] = Field(
        "full",
        description="'densenet' runs model.forward_densenet (DenseNet and its head only), "
        "enough for the DenseNet stages and much cheaper than the whole UNet",
    )
    enabled: bool = True
    shuffle: bool = Field(
        True,
        description="draw training batches in a new order each epoch; the authors' final stage "
        "(Module/) keeps file order",
    )
    frozen_batchnorm: Literal["eval", "train"] = Field(
        "eval",
        description="batch norms of the parts the stage does not train: 'eval' keeps their "
        "statistics fixed; 'train' normalises with batch statistics and updates the running "
        "ones, as the authors' net.train() does",
    )
    triplet_margin: float = Field(1.0, gt=0)
    triplet_features: Literal["pooled", "map"] = Field(
        "pooled",
        description="'pooled': one Euclidean distance between the GAP vectors of denseblock4; "
        "'map': the authors' TripletMarginLoss on the 4-D denseblock4 maps (a distance per "
        "channel and row, along the width axis, hinge averaged over them)",
    )
    triplet_reduction: Literal["mean", "sum"] = Field(
        "mean", description="over the batch's triplets: the mean, or the authors' sum"
    )
    supcon_temperature: float = Field(0.07, gt=0)
    projection_dim: int = Field(128, ge=1, description="SupCon projection head output size")

    @model_validator(mode="after")
    def _consistent(self) -> StageSpec:
        if len(set(self.trains)) != len(self.trains):
            raise ValueError(f"stage {self.name}: trains lists a submodule twice: {self.trains}")
        implied = _HEAD_OF_LOSS.get(self.loss)
        if implied is not None and self.head not in (None, implied):
            raise ValueError(
                f"stage {self.name}: loss {self.loss} trains the {implied} head, "
                f"but head is {self.head!r}"
            )
        if self.loss == "joint" and self.head is None:
            raise ValueError(f"stage {self.name}: the joint loss needs a head for its CE term")
        if self.branch == "densenet" and (
            self.loss not in _DENSENET_BRANCH_LOSSES or self.head == "fusion"
        ):
            raise ValueError(
                f"stage {self.name}: branch 'densenet' has no {self.head or self.loss} output"
            )
        if self.triplet_features == "map" and self.branch != "densenet":
            raise ValueError(
                f"stage {self.name}: triplet_features 'map' reads the denseblock4 map, which "
                "only branch 'densenet' returns"
            )
        return self

    @property
    def report_head(self) -> str | None:
        """The head whose accuracy/AUC is reported: ``head``, or the one the CE loss trains."""
        return self.head or _HEAD_OF_LOSS.get(self.loss)


ALL_PARTS: tuple[str, ...] = (
    "densenet",
    "densenet_head",
    "encoder",
    "decoder",
    "saliency_head",
    "fusion_classifier",
)
"""The dual-encoder UNet's submodules, by attribute name."""

PAPER_STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        name="s1a",
        trains=("densenet",),
        loss="triplet",
        batch_size=32,
        max_epochs=50,
        branch="densenet",
    ),
    StageSpec(
        name="s1b",
        trains=("densenet", "densenet_head"),
        loss="ce_densenet",
        batch_size=16,
        max_epochs=10,
        branch="densenet",
    ),
    StageSpec(
        name="s2",
        trains=("encoder", "decoder", "saliency_head"),
        loss="kl",
        batch_size=16,
        max_epochs=50,
    ),
    StageSpec(
        name="s3",
        trains=("fusion_classifier",),
        loss="ce_fusion",
        batch_size=6,
        max_epochs=40,
    ),
    # The paper gives no batch size or epoch cap for the optional joint fine-tune; stage 3's.
    StageSpec(
        name="s3j",
        trains=ALL_PARTS,
        loss="joint",
        head="fusion",
        batch_size=6,
        max_epochs=40,
        enabled=False,
    ),
)
"""The paper's table: 1a triplet pretraining, 1b DenseNet classification, 2 saliency with DenseNet
frozen, 3 the fusion classifier alone, and the optional joint fine-tune 3' (disabled)."""


def frozen_parts(model: nn.Module, spec: StageSpec) -> tuple[str, ...]:
    """The model's top-level submodules the stage does not train, in the model's order.

    Raises:
        ValueError: ``spec.trains`` names a submodule the model does not have.
    """
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in spec.trains if name not in children]
    if unknown:
        raise ValueError(
            f"stage {spec.name}: trains {unknown}, which the model does not have; "
            f"its submodules are {children}"
        )
    return tuple(name for name in children if name not in spec.trains)


def make_stage_module(spec: StageSpec, model: nn.Module) -> nn.Module | None:
    """The trainable parts a stage owns besides the model's, freshly initialised, on CPU.

    SupCon's projection head (GAP features -> hidden -> ``projection_dim``, hidden as wide as the
    input) and the joint loss's learnt uncertainty; ``None`` for the other losses. They are saved
    in the stage's checkpoints, not in the model.
    """
    if spec.loss == "supcon":
        dim = model.get_submodule("densenet").num_features
        return ProjectionHead(dim, dim, spec.projection_dim)
    if spec.loss == "joint":
        return UncertaintyWeightedLoss()
    return None


def contrastive_features(spec: StageSpec) -> str:
    """The output a contrastive stage's loss reads (what distributed training gathers)."""
    return (
        "denseblock4" if spec.loss == "triplet" and spec.triplet_features == "map" else "embedding"
    )


def stage_outputs(model: nn.Module, spec: StageSpec, images: Tensor) -> dict[str, Tensor]:
    """The forward pass a stage needs: (B, 1, H, W) -> the model's dict of named outputs."""
    if spec.branch == "densenet":
        return model.forward_densenet(images)
    return model(images)


def stage_loss(
    spec: StageSpec,
    outputs: dict[str, Tensor],
    batch: dict[str, Tensor],
    stage_module: nn.Module | None = None,
) -> Tensor:
    """The stage's 0-d float32 loss for one batch.

    Args:
        spec: the stage.
        outputs: the model's outputs (``embedding`` (B, D), ``denseblock4`` (B, D, h, w),
            ``densenet_logits`` /
            ``fusion_logits`` (B, C), ``saliency`` (B, 1, H, W) log-probabilities).
        batch: ``label`` (B,) and ``saliency`` (B, 1, H, W) targets on the outputs' device.
        stage_module: what :func:`make_stage_module` made for the stage.
    """
    labels = batch["label"]
    if spec.loss == "triplet":
        if spec.triplet_features == "map":
            return feature_map_triplet_loss(
                outputs["denseblock4"], labels, spec.triplet_margin, spec.triplet_reduction
            )
        return supervised_triplet_loss(
            outputs["embedding"], labels, spec.triplet_margin, spec.triplet_reduction
        )
    if spec.loss == "supcon":
        return supcon_loss(stage_module(outputs["embedding"]), labels, spec.supcon_temperature)
    if spec.loss in _HEAD_OF_LOSS:
        return classification_ce(outputs[f"{_HEAD_OF_LOSS[spec.loss]}_logits"], labels)
    kl = saliency_kl(outputs["saliency"], batch["saliency"])
    if spec.loss == "kl":
        return kl
    return stage_module(classification_ce(outputs[f"{spec.head}_logits"], labels), kl)
