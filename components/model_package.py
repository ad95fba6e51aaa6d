"""The logged model: a pyfunc that rebuilds the network from ``model_lib`` and a state dict.

What an MLflow model version holds (``mlflow.pytorch.log_model`` is not used: since MLflow 3 it
serialises with torch.export, which loads back as a ``GraphModule`` without the dict outputs):

- ``artifacts/weights.pt``: ``torch.save(model.state_dict())``, read back with
  ``torch.load(weights_only=True)``; its sha256 is a tag of the version and is checked by
  :func:`load_registered_model` before anything is loaded.
- ``artifacts/package.json``: the :class:`PackageConfig`, i.e. the ``ModelConfig`` to rebuild the
  network and the ``GeometryConfig`` the images were preprocessed with (serving must preprocess
  the same way; the model itself takes preprocessed images).
- ``code/model_lib``: the library, so the model loads where the project is not installed. The
  wrapper class is pickled by value for the same reason.
- a tensor signature: input float32 (-1, 1, H, W) in [0, 1]; outputs ``probabilities``
  float32 (-1, C) and ``saliency`` float32 (-1, H, W), each map summing to 1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import torch
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc import PyFuncModel
from mlflow.types import Schema, TensorSpec
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

import model_lib
from components.registry import WEIGHTS_SHA256_TAG, registry_client
from model_lib.config import GeometryConfig, ModelConfig
from model_lib.data.schema import CLASS_NAMES
from model_lib.models import build_model
from model_lib.presets import ExperimentConfig

WEIGHTS_ARTIFACT, CONFIG_ARTIFACT = "weights", "package"
WEIGHTS_FILE, CONFIG_FILE = "weights.pt", "package.json"
PREDICT_BATCH = 32
"""Images per forward pass inside ``predict``, which bounds memory for large inputs."""
PINNED_PACKAGES = ("torch", "torchvision", "numpy", "pydantic", "pyyaml", "mlflow")
"""What loading needs besides the standard library (model_lib.config reads YAML)."""


class WeightsIntegrityError(ValueError):
    """The weights file of a model version does not have the sha256 it was registered with."""


class PackageConfig(BaseModel):
    """What the pyfunc needs besides the weights: the network and the preprocessing geometry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: ModelConfig
    geometry: GeometryConfig
    class_names: tuple[str, ...] = CLASS_NAMES

    @model_validator(mode="after")
    def _consistent(self) -> PackageConfig:
        if len(self.class_names) != self.model.num_classes:
            raise ValueError(
                f"class_names {self.class_names} do not match num_classes {self.model.num_classes}"
            )
        if tuple(self.model.input_hw) != tuple(self.geometry.target_hw):
            raise ValueError(
                f"model input_hw {self.model.input_hw} differs from the geometry's target_hw "
                f"{self.geometry.target_hw}"
            )
        return self

    @classmethod
    def from_experiment(cls, cfg: ExperimentConfig) -> PackageConfig:
        """The network of ``cfg`` and the geometry its packed store was made with (the canvas
        scaled to the images' size, as the ingest step uses it)."""
        return cls(model=cfg.model, geometry=cfg.data.scaled_geometry())

    @classmethod
    def load(cls, source: PackageConfig | ExperimentConfig | Path) -> PackageConfig:
        """A PackageConfig as given, from an ExperimentConfig, or from an experiment JSON file
        (``experiment.json`` of a training workdir).

        Raises:
            ValueError: the file is not a valid experiment config (the message names it).
        """
        if isinstance(source, PackageConfig):
            return source
        if isinstance(source, ExperimentConfig):
            return cls.from_experiment(source)
        path = Path(source)
        try:
            cfg = ExperimentConfig.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as err:
            raise ValueError(f"{path}: not a readable experiment config: {err}") from err
        return cls.from_experiment(cfg)

    def stored(self) -> PackageConfig:
        """The config as stored with the weights: the state dict holds every weight, so a local
        path to pretrained DenseNet weights must not be read (or needed) on load."""
        return self.model_copy(
            update={"model": self.model.model_copy(update={"pretrained_weights": None})}
        )


class CxrGazeModel(mlflow.pyfunc.PythonModel):
    """The network behind MLflow's pyfunc interface, on CPU, in eval mode.

    ``predict(context, images)`` takes float32 images (B, 1, H, W) in [0, 1], preprocessed with
    ``geometry``, and returns ``{"probabilities": (B, C) float32 softmax, "saliency": (B, H, W)
    float32 maps, each summing to 1}``.
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        # Parsed with the model_lib classes only: this class is pickled by value and must not
        # drag the rest of its module along.
        raw = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text(encoding="utf-8"))
        self.config = ModelConfig.model_validate(raw["model"])
        self.geometry = GeometryConfig.model_validate(raw["geometry"])
        self.class_names = tuple(raw["class_names"])
        state = torch.load(
            context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True
        )
        self.network = build_model(self.config, pretrained=False)
        self.network.load_state_dict(state)
        self.network.eval()

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: np.ndarray,
        params: dict[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        # An np.ndarray hint tells MLflow not to infer a schema from type hints; the logged
        # TensorSpec signature is what pyfunc enforces.
        h, w = self.config.input_hw
        x = np.asarray(model_input)
        if x.dtype != np.float32 or x.ndim != 4 or x.shape[1:] != (1, h, w):
            raise ValueError(
                f"model_input: expected float32 images (B, 1, {h}, {w}), got {x.dtype} {x.shape}"
            )
        # Written so that NaN fails too.
        if x.size and not ((x >= 0.0) & (x <= 1.0)).all():
            raise ValueError(
                "model_input: values must be finite and in [0, 1] (preprocessed images), got "
                f"min {np.nanmin(x):.4g}, max {np.nanmax(x):.4g}, NaN {bool(np.isnan(x).any())}"
            )
        probs, maps = [], []
        with torch.inference_mode():
            for start in range(0, len(x), PREDICT_BATCH):
                batch = np.ascontiguousarray(x[start : start + PREDICT_BATCH])
                out = self.network(torch.from_numpy(batch))
                probs.append(out["logits"].float().softmax(dim=1).numpy())
                maps.append(out["saliency"].float().exp()[:, 0].numpy())
        n_classes = self.config.num_classes
        return {
            "probabilities": np.concatenate(probs) if probs else np.zeros((0, n_classes), "f4"),
            "saliency": np.concatenate(maps) if maps else np.zeros((0, h, w), "f4"),
        }


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pip_requirements() -> list[str]:
    """``name==version`` of the installed packages the model needs, without local build tags
    (``2.14.1+cu130`` -> ``2.14.1``: PyPI has no such version; the serving image chooses its
    CUDA build)."""
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in PINNED_PACKAGES]


def model_signature(config: PackageConfig) -> ModelSignature:
    """Tensor signature: images (-1, 1, H, W) in; ``probabilities`` (-1, C) and ``saliency``
    (-1, H, W) out, all float32."""
    h, w = config.model.input_hw
    f32 = np.dtype("float32")
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, 1, h, w))]),
        outputs=Schema(
            [
                TensorSpec(f32, (-1, config.model.num_classes), "probabilities"),
                TensorSpec(f32, (-1, h, w), "saliency"),
            ]
        ),
    )


def read_state_dict(path: Path, config: PackageConfig) -> dict[str, torch.Tensor]:
    """The network weights in ``path``: a plain state dict, or a training checkpoint (its
    ``model`` entry), read with ``weights_only=True`` and checked to fit ``config.model``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: unreadable, or the weights do not fit the network (the message names the
            file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file there")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable weights file ({err})") from err
    if isinstance(payload, dict) and "format_version" in payload and "model" in payload:
        payload = payload["model"]
    if not isinstance(payload, dict) or not all(
        isinstance(v, torch.Tensor) for v in payload.values()
    ):
        raise ValueError(f"{path}: expected a state dict of tensors or a training checkpoint")
    try:
        build_model(config.stored().model, pretrained=False).load_state_dict(payload)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit {config.model}: {err}") from err
    return payload


@dataclass(frozen=True)
class LoggedPackage:
    """A logged pyfunc: MLflow's ``ModelInfo`` (``model_uri`` ``models:/m-...``, ``model_id``)
    and the sha256 of its weights file."""

    info: ModelInfo
    weights_sha256: str


def log_package(
    state: Mapping[str, torch.Tensor], config: PackageConfig, *, name: str = "model"
) -> LoggedPackage:
    """Log the pyfunc to the current tracking URI (into the active run, if any).

    Args:
        state: the network's state dict (see :func:`read_state_dict`).
        config: the network and the preprocessing geometry.

    The weights are saved as a plain state dict in a temporary folder with the config, and the
    library is copied there without bytecode caches; MLflow copies both into the model.
    """
    config = config.stored()
    h, w = config.model.input_hw
    module = sys.modules[__name__]
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-package-") as tmp:
        staged = Path(tmp)
        torch.save(dict(state), staged / WEIGHTS_FILE)
        (staged / CONFIG_FILE).write_text(config.model_dump_json(indent=2), encoding="utf-8")
        library = staged / "model_lib"
        shutil.copytree(
            Path(model_lib.__file__).parent,
            library,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        sha = sha256_file(staged / WEIGHTS_FILE)
        # By value, the class needs only mlflow, torch, numpy and model_lib where it is loaded,
        # not this project's `components` package.
        cloudpickle.register_pickle_by_value(module)
        try:
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=CxrGazeModel(),
                artifacts={
                    WEIGHTS_ARTIFACT: str(staged / WEIGHTS_FILE),
                    CONFIG_ARTIFACT: str(staged / CONFIG_FILE),
                },
                code_paths=[str(library)],
                signature=model_signature(config),
                input_example=np.full((1, 1, h, w), 0.5, dtype=np.float32),
                pip_requirements=pip_requirements(),
                metadata={WEIGHTS_SHA256_TAG: sha, "package": config.model_dump(mode="json")},
                tags={WEIGHTS_SHA256_TAG: sha},
            )
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    return LoggedPackage(info=info, weights_sha256=sha)


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>@<alias>`` -> (name, alias, None); ``models:/<name>/<version>`` ->
    (name, None, version).

    Raises:
        ValueError: any other form (a ``models:/m-...`` id has no registry tag to check).
    """
    rest = model_uri.removeprefix("models:/")
    if rest != model_uri:
        if "@" in rest and "/" not in rest:
            name, alias = rest.split("@", 1)
            if name and alias:
                return name, alias, None
        name, _, version = rest.rpartition("/")
        if name and "/" not in name and version.isdigit():
            return name, None, version
    raise ValueError(
        f"{model_uri!r}: expected a registered model URI models:/<name>@<alias> or "
        "models:/<name>/<version>"
    )


def load_registered_model(
    model_uri: str, *, tracking_uri: str, dst_path: Path | None = None
) -> tuple[PyFuncModel, ModelVersion]:
    """Download a registered version, check its weights' sha256, and load it as a pyfunc.

    Args:
        model_uri: ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.
        tracking_uri: the tracking server (also the registry).
        dst_path: an existing folder to download into; by default a new temporary folder
            (left in place: the loaded model's code path points into it).

    Returns:
        The pyfunc and the ``ModelVersion`` (number, tags, aliases) it came from.

    Raises:
        LookupError: no such alias or version (the message names the URI).
        WeightsIntegrityError: the downloaded weights' sha256 differs from the version's tag,
            or the tag is missing.
    """
    name, alias, number = parse_model_uri(model_uri)
    client = registry_client(tracking_uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, number)
        )
    except MlflowException as err:
        raise LookupError(f"{model_uri} at {tracking_uri}: {err.message}") from err
    expected = mv.tags.get(WEIGHTS_SHA256_TAG)
    if not expected:
        raise WeightsIntegrityError(
            f"{model_uri} (version {mv.version}) has no {WEIGHTS_SHA256_TAG} tag; refusing to "
            "load weights that cannot be checked"
        )
    # Not the models:/ URI: MLflow 3.17 resolves that through the default registry (a
    # ./mlflow.db in the working directory) whatever registry_uri says.
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(name, mv.version),
            dst_path=None if dst_path is None else str(dst_path),
            tracking_uri=tracking_uri,
        )
    )
    flavor = Model.load(local).flavors["python_function"]
    weights = local / flavor["artifacts"][WEIGHTS_ARTIFACT]["path"]
    actual = sha256_file(weights)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{model_uri} (version {mv.version}): {weights.name} has sha256 {actual}, the "
            f"registry tag {WEIGHTS_SHA256_TAG} says {expected}"
        )
    return mlflow.pyfunc.load_model(str(local)), mv
