from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torchvision.models import densenet121

from model_lib.models.encoders import DenseNetEncoder
from model_lib.models.weights import load_pretrained_densenet, torchvision_densenet_keys


def _old_style(key: str) -> str:
    """The 'norm.1' naming of older torchvision checkpoints (the published ImageNet files)."""
    return re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key)


@pytest.fixture(scope="module")
def densenet121_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    state = densenet121(weights=None).state_dict()
    # Make the running statistics differ from a fresh model's, so loading them is visible.
    return {k: v + 1 if "running" in k else v for k, v in state.items()}


@pytest.fixture(scope="module")
def saved_densenet121(
    tmp_path_factory: pytest.TempPathFactory, densenet121_state: dict[str, torch.Tensor]
) -> Path:
    """A random DenseNet121 state dict saved like the published ImageNet file: old-style keys,
    no 'num_batches_tracked'."""
    path = tmp_path_factory.mktemp("weights") / "densenet121.pth"
    old = {_old_style(k): v for k, v in densenet121_state.items() if "num_batches" not in k}
    torch.save(old, path)
    return path


def test_old_style_keys_are_renamed_and_the_classifier_dropped() -> None:
    value = torch.zeros(1)
    state = {
        "features.denseblock1.denselayer3.norm.1.weight": value,
        "features.denseblock4.denselayer16.conv.2.weight": value,
        "features.norm5.running_var": value,
        "classifier.weight": value,
    }
    assert set(torchvision_densenet_keys(state)) == {
        "features.denseblock1.denselayer3.norm1.weight",
        "features.denseblock4.denselayer16.conv2.weight",
        "features.norm5.running_var",
    }


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_an_old_style_torchvision_file_round_trips(
    saved_densenet121: Path, densenet121_state: dict[str, torch.Tensor], as_uri: bool
) -> None:
    encoder = DenseNetEncoder("densenet121")
    load_pretrained_densenet(encoder, saved_densenet121.as_uri() if as_uri else saved_densenet121)
    loaded = encoder.state_dict()
    for key, value in loaded.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, densenet121_state[key]), key


def test_a_current_torchvision_state_dict_round_trips(
    tmp_path: Path, densenet121_state: dict[str, torch.Tensor]
) -> None:
    path = tmp_path / "current.pth"
    torch.save(densenet121_state, path)
    encoder = DenseNetEncoder("densenet121")
    load_pretrained_densenet(encoder, path)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, densenet121_state[key]), key


def test_a_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "densenet201.pth"
    with torch.device("meta"):
        encoder = DenseNetEncoder("densenet121")
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_pretrained_densenet(encoder, missing)
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_pretrained_densenet(encoder, missing.as_uri())


def test_weights_of_another_variant_are_refused(saved_densenet121: Path) -> None:
    path = saved_densenet121
    with torch.device("meta"):
        encoder = DenseNetEncoder("densenet201")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a torchvision densenet201"):
        load_pretrained_densenet(encoder, path)


def test_a_wrongly_shaped_tensor_is_named(tmp_path: Path) -> None:
    encoder = DenseNetEncoder("densenet121")
    state = encoder.state_dict()
    state["features.conv0.weight"] = torch.zeros(32, 3, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    before = encoder.features.conv0.weight.clone()
    with pytest.raises(ValueError, match=r"features\.conv0\.weight has shape \(32, 3, 7, 7\)"):
        load_pretrained_densenet(encoder, path)
    assert torch.equal(encoder.features.conv0.weight, before)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with torch.device("meta"):
        encoder = DenseNetEncoder("densenet121")
    with pytest.raises(ValueError, match="not a state dict"):
        load_pretrained_densenet(encoder, path)
