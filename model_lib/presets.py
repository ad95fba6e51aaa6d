"""Experiment presets: the whole configuration of a training run, by name, with overrides.

``paper`` is the paper (320 x 256, DenseNet201, its epochs and batches); ``paper-exact`` is the
authors' released code, choice by choice, where it differs from ``paper``; ``demo`` is what
``make run`` trains on the synthetic release on a laptop CPU; ``ci`` is the smallest thing that
runs every stage, seconds each. Change any field with dotted overrides::

    get_preset("demo", ["stages.s2.max_epochs=3", "model.width=0.5", "stages.s3j.enabled=true"])

A stage is addressed by its name; values are parsed as YAML (``3``, ``0.5``, ``true``,
``[160, 128]``, ``null``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model_lib.config import DataConfig, GeometryConfig, ModelConfig, SplitConfig
from model_lib.training.precision import PrecisionName
from model_lib.training.stages import PAPER_STAGES, StageSpec


class ExperimentConfig(BaseModel):
    """Everything one training run needs: the network, the data geometry, the stages in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    stages: tuple[StageSpec, ...] = PAPER_STAGES
    seed: int = 0
    num_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads for the run; None keeps torch's default"
    )
    precision: PrecisionName = Field(
        "auto",
        description="training arithmetic: 'auto' (bf16 autocast where the hardware has it, "
        "fp16 + gradient scaler on older GPUs, else fp32), or 'fp32', 'bf16', 'fp16' (CUDA "
        "only; the authors' torch.cuda.amp)",
    )
    evaluation_split: Literal["test", "val"] = Field(
        "test",
        description="the split the evaluate step reports: the held-out test split, or the "
        "validation split the stages select on (the authors' released code); the promotion "
        "gate always compares on test",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if tuple(self.model.input_hw) != tuple(self.data.geometry.target_hw):
            raise ValueError(
                f"model.input_hw {self.model.input_hw} differs from data.geometry.target_hw "
                f"{self.data.geometry.target_hw}; set both"
            )
        return self

    def stage(self, name: str) -> StageSpec:
        """The stage called ``name`` (KeyError naming the known ones)."""
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise KeyError(f"no stage {name!r}; stages are {[s.name for s in self.stages]}")

    @property
    def enabled_stages(self) -> tuple[StageSpec, ...]:
        return tuple(s for s in self.stages if s.enabled)


def _small_stages(
    epochs: dict[str, int], batch_sizes: dict[str, int], **fields: Any
) -> tuple[StageSpec, ...]:
    """The paper's stages with other epoch caps, batch sizes and shared settings."""
    return tuple(
        spec.model_copy(
            update={"max_epochs": epochs[spec.name], "batch_size": batch_sizes[spec.name], **fields}
        )
        for spec in PAPER_STAGES
    )


def _data(target_hw: tuple[int, int], native_scale: float) -> DataConfig:
    return DataConfig(geometry=GeometryConfig(target_hw=target_hw), native_scale=native_scale)


_SMALL_HW = (80, 64)
"""The paper's 5:4 canvas at 1/4 of its side: isotropic sampling, DenseNet's deepest map 2 x 2."""


def _authors_stages() -> tuple[StageSpec, ...]:
    """The stages as the authors' released code runs them, one folder each: CL/ (triplet on the
    denseblock4 maps, summed), Classfication/, KL/ (DenseNet frozen) and Module/, which trains
    every part with the joint loss (its fusion-only freezing is commented out) in file order.
    Every stage keeps batch norm in train mode for frozen parts (their ``net.train()``)."""
    by_name = {spec.name: spec for spec in PAPER_STAGES}
    common = {"frozen_batchnorm": "train"}
    return (
        by_name["s1a"].model_copy(
            update={"triplet_features": "map", "triplet_reduction": "sum", **common}
        ),
        by_name["s1b"].model_copy(update=common),
        by_name["s2"].model_copy(update=common),
        by_name["s3"].model_copy(update={"enabled": False, **common}),
        by_name["s3j"].model_copy(update={"enabled": True, "shuffle": False, **common}),
    )


PRESETS: dict[str, ExperimentConfig] = {
    # The paper's network, stages and hyper-parameters with this project's choices where the
    # authors' code differs (README: "Where cxr-gaze differs from the authors' code").
    "paper": ExperimentConfig(),
    # The authors' released code, choice by choice: see _authors_stages; images centre-cropped
    # (not shrunk) when wider than the canvas, raw pixel values over their max, no ImageNet
    # normalisation, their round-robin split, fp16 autocast (CUDA), the validation split
    # reported.
    "paper-exact": ExperimentConfig(
        model=ModelConfig(input_norm="none"),
        data=DataConfig(
            geometry=GeometryConfig(oversize="crop", intensity="raw"),
            split=SplitConfig(method="authors"),
        ),
        stages=_authors_stages(),
        precision="fp16",
        evaluation_split="val",
    ),
    # Sized for `make run`: every stage in about 5 minutes on 2 idle CPU cores, on the synthetic
    # release of params.yaml (420 images at 1/4 of real size; 294 train, 84 test). DenseNet121
    # starts from random weights (nothing is downloaded), hence the larger LR; plateau
    # patiences fit the few epochs. The saliency stage still improves at its last epoch, the
    # classification stages stop early.
    "demo": ExperimentConfig(
        model=ModelConfig(
            backbone="densenet121", width=0.25, input_hw=_SMALL_HW, pretrained_weights=None
        ),
        data=_data(_SMALL_HW, native_scale=0.25),
        stages=_small_stages(
            epochs={"s1a": 2, "s1b": 10, "s2": 14, "s3": 6, "s3j": 2},
            batch_sizes={"s1a": 32, "s1b": 16, "s2": 16, "s3": 16, "s3j": 16},
            lr=1e-3,
            lr_patience=2,
            early_stopping_patience=4,
        ),
        num_threads=2,
    ),
    # Every stage in seconds on a few dozen images: the narrowest UNet, and just enough epochs
    # for each stage's training loss to fall. No early stop, so every epoch runs. The fused
    # classifier takes small batches: on ~17 training images, 2 steps an epoch are too few.
    "ci": ExperimentConfig(
        model=ModelConfig(
            backbone="densenet121", width=0.125, input_hw=_SMALL_HW, pretrained_weights=None
        ),
        data=_data(_SMALL_HW, native_scale=0.1),
        stages=_small_stages(
            epochs={"s1a": 3, "s1b": 3, "s2": 3, "s3": 3, "s3j": 1},
            batch_sizes={"s1a": 8, "s1b": 8, "s2": 8, "s3": 4, "s3j": 8},
            lr=1e-3,
            lr_patience=2,
            early_stopping_patience=3,
        ),
        num_threads=1,
    ),
}
"""The named experiments."""


def _set(tree: dict[str, Any], path: list[str], value: Any, override: str) -> None:
    """Set ``tree[path] = value`` where every step must already exist; a list of stages is
    indexed by stage name."""
    node: Any = tree
    for depth, key in enumerate(path):
        if isinstance(node, list):
            names = [item.get("name") for item in node]
            if key not in names:
                raise ValueError(f"override {override!r}: no stage {key!r}; stages are {names}")
            index = names.index(key)
            if depth == len(path) - 1:
                node[index] = value
                return
            node = node[index]
            continue
        where = ".".join(path[:depth]) or "the config"
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {where} is a value, not a section")
        if key not in node:
            raise ValueError(
                f"override {override!r}: unknown key {key!r} in {where}; known keys: {sorted(node)}"
            )
        if depth == len(path) - 1:
            node[key] = value
            return
        node = node[key]


def apply_overrides(config: ExperimentConfig, overrides: Sequence[str]) -> ExperimentConfig:
    """``config`` with each ``dotted.key=value`` applied, validated as a whole.

    Raises:
        ValueError: an override is not ``key=value``, names an unknown key or stage, or gives
            a value the config rejects (the message quotes the override or the field).
    """
    tree = config.model_dump(mode="json")
    for override in overrides:
        key, sep, raw = override.partition("=")
        path = key.strip().split(".")
        if not sep or not all(path):
            raise ValueError(f"override {override!r}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ValueError(f"override {override!r}: value is not YAML ({err})") from err
        _set(tree, path, value, override)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as err:
        raise ValueError(f"overrides {list(overrides)}: {err}") from err


def get_preset(name: str, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The preset called ``name`` with ``overrides`` applied (see :func:`apply_overrides`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return apply_overrides(PRESETS[name], overrides)
