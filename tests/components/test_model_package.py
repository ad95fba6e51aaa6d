"""The pyfunc package: what a version stores, how it loads, what it predicts, the weights check.

One model is registered per module (embedded sqlite store under tmp) and loaded once; the tests
read it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pytest
import torch
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel
from mlflow.tracking import MlflowClient
from torch import nn

import model_lib
from components.model_package import (
    PINNED_PACKAGES,
    PackageConfig,
    WeightsIntegrityError,
    load_registered_model,
    parse_model_uri,
    pip_requirements,
    read_state_dict,
)
from components.register import RegistrationResult, register_model
from components.registry import WEIGHTS_SHA256_TAG
from model_lib.config import GeometryConfig
from model_lib.models import build_model
from model_lib.presets import ExperimentConfig
from model_lib.training import save_checkpoint
from tests.components.conftest import Backend

LINEAGE = {
    "data_rev": "v1",
    "data_md5": "d41d8cd98f00b204e9800998ecf8427e",
    "git_sha": "911c390",
    "pipeline_run_id": "package-run",
    "preset": "ci",
}


@pytest.fixture(scope="module")
def registered(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_db: Path,
    weights_file: Path,
    ci_config: ExperimentConfig,
) -> tuple[Backend, RegistrationResult]:
    folder = tmp_path_factory.mktemp("package")
    shutil.copyfile(migrated_db, folder / "mlflow.db")
    backend = Backend(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts"))
    result = register_model(
        weights_file,
        ci_config,
        {"auc_macro": 0.5},
        LINEAGE,
        tracking_uri=backend.tracking_uri,
        artifact_location=backend.artifact_location,
    )
    return backend, result


@pytest.fixture(scope="module")
def loaded(
    registered: tuple[Backend, RegistrationResult], tmp_path_factory: pytest.TempPathFactory
) -> tuple[PyFuncModel, ModelVersion, Path]:
    backend, _ = registered
    local = tmp_path_factory.mktemp("downloaded")
    model, version = load_registered_model(
        "models:/cxr-gaze@challenger", tracking_uri=backend.tracking_uri, dst_path=local
    )
    (model_dir,) = [p for p in local.iterdir() if (p / "MLmodel").is_file()] or [local]
    return model, version, model_dir


def images(n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, *hw), dtype=np.float32)


def test_predict_returns_probabilities_and_maps_like_the_network(
    loaded: tuple[PyFuncModel, ModelVersion, Path], network: nn.Module, ci_config: ExperimentConfig
) -> None:
    model, _, _ = loaded
    hw = ci_config.model.input_hw
    x = images(35, hw)  # more than one internal batch of 32, and an odd remainder
    out = model.predict(x)
    assert set(out) == {"probabilities", "saliency"}
    probs, maps = out["probabilities"], out["saliency"]
    assert probs.shape == (35, 3) and probs.dtype == np.float32
    assert maps.shape == (35, *hw) and maps.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), 1.0, atol=1e-4)
    assert (maps >= 0).all()
    with torch.no_grad():
        ref = network(torch.from_numpy(x))
    np.testing.assert_allclose(probs, ref["logits"].softmax(dim=1).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps, ref["saliency"].exp()[:, 0].numpy(), atol=1e-5, rtol=0)


def test_predict_rejects_inputs_outside_the_signature(
    loaded: tuple[PyFuncModel, ModelVersion, Path], ci_config: ExperimentConfig
) -> None:
    model, _, _ = loaded
    h, w = ci_config.model.input_hw
    # pyfunc enforces the logged TensorSpec before the model sees the data.
    with pytest.raises(MlflowException, match="dtype"):
        model.predict(images(2, (h, w)).astype(np.float64))
    with pytest.raises(MlflowException, match="shape"):
        model.predict(images(2, (h + 1, w)))
    # The model checks what the signature cannot say: preprocessed values are in [0, 1].
    with pytest.raises(ValueError, match=r"finite and in \[0, 1\].*max 2"):
        model.predict(images(2, (h, w)) * 255)
    with_nan = images(2, (h, w))
    with_nan[1, 0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN True"):
        model.predict(with_nan)
    with pytest.raises(ValueError, match=f"float32 images \\(B, 1, {h}, {w}\\)"):
        model.unwrap_python_model().predict(None, images(2, (h, w)).astype(np.float64))


def test_the_version_carries_its_config_geometry_and_checksum(
    loaded: tuple[PyFuncModel, ModelVersion, Path],
    registered: tuple[Backend, RegistrationResult],
    ci_config: ExperimentConfig,
) -> None:
    model, version, model_dir = loaded
    python_model = model.unwrap_python_model()
    assert python_model.config == ci_config.model
    # The geometry the packed store was made with: the canvas scaled to the images.
    assert python_model.geometry == ci_config.data.scaled_geometry()
    assert python_model.geometry.pad_to != ci_config.data.geometry.pad_to
    assert version.tags[WEIGHTS_SHA256_TAG] == registered[1].weights_sha256
    stored = json.loads((model_dir / "artifacts" / "package.json").read_text())
    assert stored["model"]["pretrained_weights"] is None
    mlmodel = yaml.safe_load((model_dir / "MLmodel").read_text())
    assert mlmodel["metadata"][WEIGHTS_SHA256_TAG] == registered[1].weights_sha256
    outputs = json.loads(mlmodel["signature"]["outputs"])
    assert [(o["name"], o["tensor-spec"]["shape"]) for o in outputs] == [
        ("probabilities", [-1, 3]),
        ("saliency", [-1, *ci_config.model.input_hw]),
    ]
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert inputs[0]["tensor-spec"] == {
        "dtype": "float32",
        "shape": [-1, 1, *ci_config.model.input_hw],
    }


def test_requirements_are_plain_pins(loaded: tuple[PyFuncModel, ModelVersion, Path]) -> None:
    _, _, model_dir = loaded
    lines = (model_dir / "requirements.txt").read_text().split()
    assert lines == pip_requirements()
    assert [line.split("==")[0] for line in lines] == list(PINNED_PACKAGES)
    assert not any("+" in line for line in lines), lines  # no local build tags like +cu130


def test_the_package_needs_model_lib_but_not_the_project(
    loaded: tuple[PyFuncModel, ModelVersion, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, model_dir = loaded
    library = Path(model_lib.__file__).parent
    expected = sorted(str(p.relative_to(library)) for p in library.rglob("*.py"))
    shipped = model_dir / "code" / "model_lib"
    assert sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*.py")) == expected
    assert not list(shipped.rglob("__pycache__"))
    # The wrapper class is pickled by value: unpickling must not import `components`.
    for name in [m for m in sys.modules if m == "components" or m.startswith("components.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "components", None)  # any import of it now fails
    with open(model_dir / "python_model.pkl", "rb") as f:
        python_model = cloudpickle.load(f)
    assert type(python_model).__name__ == "CxrGazeModel"


def test_a_checksum_mismatch_refuses_to_load(
    registered: tuple[Backend, RegistrationResult],
) -> None:
    backend, result = registered
    client = MlflowClient(backend.tracking_uri, registry_uri=backend.tracking_uri)
    try:
        client.set_model_version_tag("cxr-gaze", result.version, WEIGHTS_SHA256_TAG, "0" * 64)
        with pytest.raises(WeightsIntegrityError, match=f"version {result.version}.*0{{64}}"):
            load_registered_model("models:/cxr-gaze/1", tracking_uri=backend.tracking_uri)
        client.delete_model_version_tag("cxr-gaze", result.version, WEIGHTS_SHA256_TAG)
        with pytest.raises(WeightsIntegrityError, match="no weights_sha256 tag"):
            load_registered_model("models:/cxr-gaze/1", tracking_uri=backend.tracking_uri)
    finally:
        client.set_model_version_tag(
            "cxr-gaze", result.version, WEIGHTS_SHA256_TAG, result.weights_sha256
        )


def test_an_unknown_alias_or_version_is_a_lookup_error(
    registered: tuple[Backend, RegistrationResult],
) -> None:
    backend, _ = registered
    with pytest.raises(LookupError, match="models:/cxr-gaze@champion"):
        load_registered_model("models:/cxr-gaze@champion", tracking_uri=backend.tracking_uri)
    with pytest.raises(LookupError, match="models:/cxr-gaze/9"):
        load_registered_model("models:/cxr-gaze/9", tracking_uri=backend.tracking_uri)


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/cxr-gaze@champion", ("cxr-gaze", "champion", None)),
        ("models:/cxr-gaze/12", ("cxr-gaze", None, "12")),
        ("models:/m-0123abc", None),
        ("models:/cxr-gaze/latest", None),
        ("runs:/abc/model", None),
        ("models:/@champion", None),
        ("models:/a/b/3", None),
    ],
)
def test_parse_model_uri(uri: str, parsed: tuple[str, str | None, str | None] | None) -> None:
    if parsed is None:
        with pytest.raises(ValueError, match="models:/<name>@<alias>"):
            parse_model_uri(uri)
    else:
        assert parse_model_uri(uri) == parsed


def test_read_state_dict_takes_checkpoints_and_names_bad_files(
    tmp_path: Path, network: nn.Module, ci_config: ExperimentConfig
) -> None:
    config = PackageConfig.from_experiment(ci_config)
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint, {"model": network.state_dict(), "epoch": 3})
    state = read_state_dict(checkpoint, config)
    assert state.keys() == network.state_dict().keys()

    other = tmp_path / "mt_unet.pt"
    torch.save(build_model(ci_config.model.model_copy(update={"arch": "mt_unet",
               "classifier": "fusion"})).state_dict(), other)  # fmt: skip
    with pytest.raises(ValueError, match=r"mt_unet\.pt: weights do not fit"):
        read_state_dict(other, config)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"garbage\.pt: not a readable weights file"):
        read_state_dict(garbage, config)
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match=r"list\.pt: expected a state dict"):
        read_state_dict(listed, config)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        read_state_dict(tmp_path / "missing.pt", config)


def test_package_config_from_an_experiment_json(
    tmp_path: Path, ci_config: ExperimentConfig
) -> None:
    path = tmp_path / "experiment.json"
    path.write_text(ci_config.model_dump_json())
    config = PackageConfig.load(path)
    assert config == PackageConfig.from_experiment(ci_config)
    assert config.geometry == ci_config.data.scaled_geometry()
    with_weights = config.model_copy(
        update={"model": config.model.model_copy(update={"pretrained_weights": "/x/d121.pth"})}
    )
    assert with_weights.stored().model.pretrained_weights is None
    with pytest.raises(ValueError, match="do not match num_classes 3"):
        PackageConfig(model=config.model, geometry=config.geometry, class_names=("a", "b"))
    with pytest.raises(ValueError, match=r"input_hw \(\d+, \d+\) differs"):
        PackageConfig(model=config.model, geometry=GeometryConfig())

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(path.read_text()), "epochs": 3}))
    with pytest.raises(ValueError, match=r"(?s)bad\.json: not a readable experiment.*epochs"):
        PackageConfig.load(bad)
    with pytest.raises(ValueError, match=r"absent\.json"):
        PackageConfig.load(tmp_path / "absent.json")
