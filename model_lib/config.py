"""Typed configuration: one frozen pydantic model per concern, filled from params.yaml or a preset.

Unknown keys are rejected so a typo in params.yaml fails loudly instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GeometryConfig(_Config):
    """How an image becomes a model input: placed in a centred canvas, sampled down to the
    target size, its intensities mapped. Stored with the model, so serving preprocesses alike."""

    target_hw: tuple[int, int] = (320, 256)
    pad_to: tuple[int, int] = (3200, 2560)
    resample: Literal["subsample", "area"] = Field(
        "subsample",
        description="'subsample' takes every k-th canvas pixel (the paper); 'area' averages",
    )
    oversize: Literal["fit", "crop"] = Field(
        "fit",
        description="a side longer than the canvas (landscape views): 'fit' shrinks the whole "
        "image into the canvas, aspect kept; 'crop' centre-crops it, as the authors' negative "
        "F.pad does (248 px off each side of a 2544x3056 image)",
    )
    intensity: Literal["window", "raw"] = Field(
        "window",
        description="'window' applies the DICOM rescale and window and inverts MONOCHROME1 "
        "(bright = dense everywhere); 'raw' keeps pydicom's stored pixel_array values, as the "
        "authors do. Either way the sampled image is divided by its max.",
    )

    @model_validator(mode="after")
    def _positive(self) -> GeometryConfig:
        if min(*self.target_hw, *self.pad_to) <= 0:
            raise ValueError("target_hw and pad_to must be positive")
        if self.target_hw[0] > self.pad_to[0] or self.target_hw[1] > self.pad_to[1]:
            raise ValueError(f"target_hw {self.target_hw} is larger than pad_to {self.pad_to}")
        return self


class HeatmapConfig(_Config):
    """Which gaze events make the ground-truth map, and how wide the blur is."""

    source: Literal["gaze", "fixations", "fixations_duration"] = Field(
        "gaze",
        description="raw gaze samples (the paper), fixations counted, or weighted by duration",
    )
    sigma_px: float = Field(75.5, gt=0, description="Gaussian sigma in native DICOM pixels")
    sigma_deg: float | None = Field(
        None, gt=0, description="if set, sigma in degrees of visual angle (overrides sigma_px)"
    )
    viewing_distance_mm: float = Field(650.0, gt=0)
    screen_width_mm: float = Field(596.7, gt=0, description="Dell S2719DGF active width")


AUTHORS_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
"""What the authors' round robin gives: of every 10 images of a class, 7 train, 1 val, 2 test."""


class SplitConfig(_Config):
    """Class-stratified train/val/test split."""

    fractions: tuple[float, float, float] = AUTHORS_SPLIT_FRACTIONS
    seed: int = 0
    method: Literal["patients", "authors"] = Field(
        "patients",
        description="'patients': patients (not images) are shuffled per class and cut by "
        "fractions, so no patient spans two splits; 'authors': their round robin over images "
        "in a torch.randperm order (Data/hzhu_data_raw.py save_all), patients may span splits",
    )

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {self.fractions}")
        if self.method == "authors" and tuple(self.fractions) != AUTHORS_SPLIT_FRACTIONS:
            raise ValueError(
                f"split method 'authors' always cuts {AUTHORS_SPLIT_FRACTIONS}; "
                f"fractions {self.fractions} need method 'patients'"
            )
        return self


class ValidationConfig(_Config):
    """Ingest validation limits for the quirks of real eye-tracking data.

    Off-screen samples (FPOG/BPOG outside [0, 1]) and samples outside the image (negative
    X/Y_ORIGINAL) are warnings, counted per image, and dropped from the heatmaps. An image
    fails ingest only when its fraction of such samples, in fixations.csv or eye_gaze.csv,
    exceeds the limit here.
    """

    max_offscreen_fraction: float = Field(
        0.10,
        ge=0,
        le=1,
        description="largest fraction of an image's samples with FPOG or BPOG outside [0, 1] "
        "(the reader looked off screen); a real tracker reports a few per cent",
    )
    max_outside_image_fraction: float = Field(
        0.50,
        ge=0,
        le=1,
        description="largest fraction of an image's samples outside the image (negative "
        "X/Y_ORIGINAL: on the letterbox padding or off screen); more suggests misaligned gaze",
    )


PhiPolicy = Literal["fail", "strip"]
"""What ingest does with a DICOM that fills identifying header fields (model_lib.data.phi)."""


class DataConfig(_Config):
    geometry: GeometryConfig = GeometryConfig()
    heatmap: HeatmapConfig = HeatmapConfig()
    split: SplitConfig = SplitConfig()
    native_scale: float = Field(
        1.0,
        gt=0,
        le=1.0,
        description="size of the images relative to real MIMIC-CXR: 1 for real data, the "
        "synthetic --scale for scaled-down synthetic data. The canvas and the native-pixel sigma "
        "scale with it so a scaled image fills the target like a real one.",
    )
    phi_policy: PhiPolicy = Field(
        "fail",
        description="a DICOM with identifying header fields filled: 'fail' stops ingest naming "
        "each file and field; 'strip' ingests it and reports the fields as a warning. Either "
        "way only the whitelisted header fields leave ingest, and values are never shown.",
    )
    validation: ValidationConfig = ValidationConfig()

    def scaled_geometry(self) -> GeometryConfig:
        """Geometry with the canvas scaled to the images' size."""
        h, w = self.geometry.pad_to
        pad_to = (round(h * self.native_scale), round(w * self.native_scale))
        return self.geometry.model_copy(update={"pad_to": pad_to})

    def scaled_heatmap(self) -> HeatmapConfig:
        """Heatmap settings with the native-pixel sigma scaled to the images' size."""
        return self.heatmap.model_copy(
            update={"sigma_px": self.heatmap.sigma_px * self.native_scale}
        )


class SynthConfig(_Config):
    """The synthetic release the demo and the tests use."""

    n_images: int = Field(420, ge=3)
    seed: int = 0
    scale: float = Field(0.25, gt=0, le=1.0)


class Params(_Config):
    """Everything in params.yaml."""

    synth: SynthConfig = SynthConfig()
    data: DataConfig = DataConfig()


def load_params(path: Path) -> Params:
    """Read params.yaml; a missing file means the defaults, an unknown key is an error."""
    path = Path(path)
    if not path.exists():
        return Params()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{path}: {err}") from err


DENSENET_ARCHS: frozenset[str] = frozenset({"dual_unet", "plain_unet"})
"""Architectures with a DenseNet branch (bottleneck, DenseNet head, pretrained weights)."""
IMAGENET_WEIGHTS = "imagenet"
"""``pretrained_weights`` value for torchvision's ImageNet weights of the backbone (the default)."""
WEIGHTS_SCHEMES: frozenset[str] = frozenset({"file", "http", "https", "s3"})
"""URI schemes ``pretrained_weights`` may use; anything else without a scheme is a local path."""
_RANDOM_WEIGHTS = frozenset({"none", "null", "random"})


class ModelConfig(_Config):
    """Which network to build and how wide. ``paper`` is the defaults.

    Archs: ``dual_unet`` the paper (DenseNet + Res+SE encoders); ``plain_unet`` the ablation with
    the plain UNet encoder in place of the Res+SE one; ``res_se_unet`` the ablation without
    DenseNet; ``mt_unet`` the MT-UNet baseline (one plain UNet encoder, Zhu et al. 2022).
    """

    arch: Literal["dual_unet", "mt_unet", "res_se_unet", "plain_unet"] = "dual_unet"
    backbone: Literal["densenet201", "densenet121"] = "densenet201"
    width: float = Field(
        1.0, gt=0, description="multiplier of the Res+SE / plain encoder and decoder widths"
    )
    input_hw: tuple[int, int] = (320, 256)
    num_classes: int = Field(3, ge=2)
    dropout: float = Field(0.25, ge=0, lt=1)
    se_reduction: int = Field(16, ge=1)
    pretrained_weights: str | None = Field(
        IMAGENET_WEIGHTS,
        description="where the DenseNet branch starts: 'imagenet' (torchvision's IMAGENET1K_V1 "
        "file for the backbone, through torch.hub's cache under $TORCH_HOME), a local path or a "
        "file://, http(s):// or s3:// URI of a torchvision DenseNet state dict, or null for "
        "random initialisation (see model_lib.models.pretrained). Archs without a DenseNet "
        "take null; 'imagenet' means null there.",
    )
    classifier: Literal["densenet", "fusion"] = Field(
        "fusion", description="which class head the model reports as 'logits'"
    )
    input_norm: Literal["imagenet", "none"] = Field(
        "imagenet",
        description="what the DenseNet branch sees: the grey image repeated to RGB and "
        "normalised with ImageNet's mean/std, or repeated as it is (the authors)",
    )

    @model_validator(mode="before")
    @classmethod
    def _weights_default(cls, data: object) -> object:
        """'imagenet' (also when absent) is null for an arch without DenseNet; 'none', 'null'
        and 'random' are null (random initialisation, asked for explicitly)."""
        if not isinstance(data, dict):
            return data
        weights = data.get("pretrained_weights", IMAGENET_WEIGHTS)
        random = isinstance(weights, str) and weights.strip().lower() in _RANDOM_WEIGHTS
        nothing_to_load = data.get("arch", "dual_unet") not in DENSENET_ARCHS
        if random or (weights == IMAGENET_WEIGHTS and nothing_to_load):
            weights = None
        return {**data, "pretrained_weights": weights}

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        has_densenet = self.arch in DENSENET_ARCHS
        # DenseNet's deepest map is at 1/32, the UNet encoders' at 1/16.
        min_side = 32 if has_densenet else 16
        if min(self.input_hw) < min_side:
            raise ValueError(
                f"input_hw {self.input_hw} is below {min_side} px for arch {self.arch}"
            )
        if not has_densenet and self.classifier == "densenet":
            raise ValueError(
                f"classifier 'densenet' needs a DenseNet branch; arch {self.arch} has none"
            )
        if not has_densenet and self.pretrained_weights is not None:
            raise ValueError(f"pretrained_weights is set but arch {self.arch} has no DenseNet")
        weights = self.pretrained_weights
        if weights is not None:
            scheme = weights.partition("://")[0].lower() if "://" in weights else ""
            if not weights.strip():
                raise ValueError("pretrained_weights is empty; use null for random initialisation")
            if scheme and scheme not in WEIGHTS_SCHEMES:
                raise ValueError(
                    f"pretrained_weights {weights!r}: scheme {scheme}:// is not one of "
                    f"{sorted(WEIGHTS_SCHEMES)} (or 'imagenet', a local path, null)"
                )
        return self
