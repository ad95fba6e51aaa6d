"""Pretrained DenseNet weights: torchvision's ImageNet enum through torch.hub's cache (or a
mirror), http(s) downloads, local files; hash checks on download and on cached files; one-line
errors in seconds when the weights cannot be had. Everything is served from 127.0.0.1 with a
generated state dict; TORCH_HOME points at the test's folder."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from torchvision.models import WeightsEnum
from torchvision.models._api import Weights

from model_lib.config import DENSENET_ARCHS, ModelConfig
from model_lib.models import (
    WeightsHashMismatch,
    WeightsUnavailable,
    build_model,
    check_pretrained,
    resolve_pretrained,
)
from model_lib.models import pretrained as pretrained_module
from model_lib.models.pretrained import (
    MIRROR_ENV,
    RANDOM_INIT,
    hub_checkpoints_dir,
    imagenet_weights,
    published_hash,
)
from model_lib.presets import PRESETS, get_preset
from tests.model_lib.models.cases import tiny_config
from tests.model_lib.models.served_weights import (
    Served,
    densenet121_state,
    save_like_torchvision,
    serve_folder,
)

pytestmark = pytest.mark.usefixtures("torch_home")  # an empty torch.hub cache

REAL_NAME = "densenet121-a639ec97.pth"
"""torchvision's published DenseNet121 file name; no generated file can match its hash."""


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return densenet121_state()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    """The generated file as torchvision publishes one: ``densenet121-<sha8>.pth``."""
    return save_like_torchvision(state, tmp_path_factory.mktemp("published"))


@pytest.fixture
def server(published: Path) -> Iterator[Served]:
    with serve_folder(published.parent) as served:
        yield served


@pytest.fixture
def fake_imagenet(published: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``imagenet`` for densenet121 resolves to an enum whose file is the generated one (the
    real file's hash cannot be matched offline); returns the file name."""

    class FakeDenseNet121Weights(WeightsEnum):
        IMAGENET1K_V1 = Weights(
            url=f"https://download.pytorch.org/models/{published.name}", transforms=None, meta={}
        )

    table = {**pretrained_module._IMAGENET, "densenet121": FakeDenseNet121Weights.IMAGENET1K_V1}
    monkeypatch.setattr(pretrained_module, "_IMAGENET", table)
    return published.name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loaded_equal(model_densenet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    for key, value in model_densenet.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


def test_imagenet_is_torchvisions_enum_of_the_backbone() -> None:
    assert imagenet_weights("densenet201").url.endswith("/densenet201-c1103571.pth")
    assert imagenet_weights("densenet121").url.endswith(f"/{REAL_NAME}")
    assert published_hash("densenet201-c1103571.pth") == "c1103571"
    assert published_hash("weights.pth") is None
    assert published_hash("model-abc.pth") is None  # too short for a published hash


def test_the_cache_is_torch_hubs(torch_home: Path) -> None:
    assert hub_checkpoints_dir() == torch_home / "hub" / "checkpoints"


def test_a_download_is_hash_checked_cached_and_not_fetched_again(
    server: Served, published: Path, torch_home: Path
) -> None:
    url = f"{server.url}/{published.name}"
    first = resolve_pretrained(url, "densenet121")
    assert first.path == torch_home / "hub" / "checkpoints" / published.name
    assert first.sha256.startswith(published_hash(published.name) or "-")
    assert first.verified and first.url == url
    second = resolve_pretrained(url, "densenet121")
    assert second == first
    assert server.hits == {f"/{published.name}": 1}
    assert [p.name for p in first.path.parent.iterdir()] == [published.name]


def test_imagenet_through_a_mirror_then_the_cache(
    fake_imagenet: str, server: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, server.url)
    weights = resolve_pretrained("imagenet", "densenet121")
    assert weights.label == "FakeDenseNet121Weights.IMAGENET1K_V1"
    assert weights.path == hub_checkpoints_dir() / fake_imagenet and weights.verified
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    assert resolve_pretrained("imagenet", "densenet121").sha256 == weights.sha256
    assert server.hits == {f"/{fake_imagenet}": 1}


def test_imagenet_from_a_mirror_folder(
    fake_imagenet: str, published: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MIRROR_ENV, published.parent.as_uri())
    weights = resolve_pretrained("imagenet", "densenet121")
    assert weights.path == published and weights.verified


def test_a_tampered_download_is_refused_and_not_cached(
    published: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "evil"
    folder.mkdir()
    tampered = folder / published.name
    tampered.write_bytes(published.read_bytes() + b"\0")
    with serve_folder(folder) as served:
        url = f"{served.url}/{published.name}"
        with pytest.raises(WeightsHashMismatch, match=re.escape(url)) as err:
            resolve_pretrained(url, "densenet121")
    assert f"does not start with {published_hash(published.name)}" in str(err.value)
    cache = hub_checkpoints_dir()
    assert not cache.exists() or list(cache.iterdir()) == []  # no file, no partial download


def test_a_cached_file_named_like_torchvisions_must_match_its_hash(
    published: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = hub_checkpoints_dir() / REAL_NAME
    cached.parent.mkdir(parents=True)
    cached.write_bytes(published.read_bytes())  # a state dict, but not torchvision's bytes
    # A dead mirror: the cached file is found first, so nothing is fetched either way.
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(WeightsHashMismatch, match=re.escape(str(cached))) as err:
        resolve_pretrained("imagenet", "densenet121")
    assert "does not start with a639ec97" in str(err.value)


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_a_local_file_is_checked_against_the_hash_in_its_name(
    published: Path, tmp_path: Path, as_uri: bool
) -> None:
    weights = resolve_pretrained(published.as_uri() if as_uri else str(published), "densenet121")
    assert weights.path == published and weights.verified
    tampered = tmp_path / published.name
    tampered.write_bytes(published.read_bytes()[:-1] + b"\1")
    with pytest.raises(WeightsHashMismatch, match=re.escape(str(tampered))):
        resolve_pretrained(str(tampered), "densenet121")


def test_a_file_without_a_hash_is_checked_for_its_variant_and_recorded(
    published: Path, tmp_path: Path
) -> None:
    plain = tmp_path / "my-densenet.pth"
    plain.write_bytes(published.read_bytes())
    cfg = tiny_config("dual_unet", pretrained_weights=str(plain))
    weights = check_pretrained(cfg)
    assert weights is not None and not weights.verified
    assert weights.sha256 == resolve_pretrained(str(published), "densenet121").sha256
    wrong = cfg.model_copy(update={"backbone": "densenet201"})
    variant = rf"{re.escape(str(plain))}: not a torchvision densenet201"
    with pytest.raises(ValueError, match=variant):
        check_pretrained(wrong)


def test_the_builder_loads_served_weights(
    server: Served, published: Path, state: dict[str, torch.Tensor]
) -> None:
    url = f"{server.url}/{published.name}"
    model = build_model(tiny_config("plain_unet", pretrained_weights=url))
    _loaded_equal(model.densenet, state)


def test_the_builder_loads_imagenet_by_default(
    fake_imagenet: str, server: Served, monkeypatch: pytest.MonkeyPatch, state: dict
) -> None:
    monkeypatch.setenv(MIRROR_ENV, server.url)
    cfg = ModelConfig(backbone="densenet121", width=0.125, input_hw=(72, 56))
    assert cfg.pretrained_weights == "imagenet"
    _loaded_equal(build_model(cfg).densenet, state)
    # pretrained=False: the architecture only, for weights loaded next; nothing fetched.
    build_model(cfg, pretrained=False)
    assert server.hits == {f"/{fake_imagenet}": 1}


def test_random_initialisation_is_asked_for_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="model_lib.models.builders"):
        build_model(tiny_config("dual_unet", pretrained_weights=None))
    assert f"densenet121: {RANDOM_INIT}" in caplog.text
    assert check_pretrained(tiny_config("dual_unet", pretrained_weights=None)) is None


def _one_line_in_seconds(call: object, *, within: float = 10.0) -> str:
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as err:
        call()  # type: ignore[operator]
    assert time.perf_counter() - start < within
    message = str(err.value)
    assert "\n" not in message
    return message


def test_paper_like_config_without_cache_or_network_fails_in_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(MIRROR_ENV, f"http://127.0.0.1:{_closed_port()}")
    model = get_preset("paper").model
    message = _one_line_in_seconds(lambda: check_pretrained(model))
    assert "DenseNet201_Weights.IMAGENET1K_V1 unavailable" in message
    assert "https://download.pytorch.org/models/densenet201-c1103571.pth" in message
    assert str(hub_checkpoints_dir() / "densenet201-c1103571.pth") in message
    assert "--set model.pretrained_weights=PATH" in message
    with pytest.raises(WeightsUnavailable):
        build_model(model)


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # the kernel accepts the connection; nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/densenet121-00000000.pth"
        message = _one_line_in_seconds(
            lambda: resolve_pretrained(url, "densenet121", timeout=0.5), within=5
        )
    assert "timed out" in message


def test_a_missing_url_or_file_is_one_line(server: Served, tmp_path: Path) -> None:
    url = f"{server.url}/densenet121-deadbeef.pth"
    assert "HTTP Error 404" in _one_line_in_seconds(lambda: resolve_pretrained(url, "densenet121"))
    missing = tmp_path / "nowhere.pth"
    message = _one_line_in_seconds(lambda: resolve_pretrained(str(missing), "densenet121"))
    assert str(missing) in message and "null for random initialisation" in message


def test_model_lib_leaves_s3_to_the_pipeline() -> None:
    with pytest.raises(ValueError, match="fetched by the pipeline's training step"):
        resolve_pretrained("s3://bucket/densenet121.pth", "densenet121")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "imagenet"),
        ({"backbone": "densenet121"}, "imagenet"),
        ({"arch": "mt_unet"}, None),
        ({"arch": "res_se_unet", "pretrained_weights": "imagenet"}, None),
        ({"pretrained_weights": None}, None),
        ({"pretrained_weights": "none"}, None),
        ({"pretrained_weights": "Random"}, None),
        (
            {"pretrained_weights": "s3://b/densenet201-c1103571.pth"},
            "s3://b/densenet201-c1103571.pth",
        ),
    ],
)
def test_config_values(fields: dict[str, object], expected: str | None) -> None:
    assert ModelConfig(**fields).pretrained_weights == expected


@pytest.mark.parametrize("value", ["gs://b/w.pth", "", "ftp://h/w.pth"])
def test_config_rejects(value: str) -> None:
    with pytest.raises(ValidationError, match="pretrained_weights"):
        ModelConfig(pretrained_weights=value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_with_a_densenet_starts_from_imagenet_unless_it_says_otherwise(
    name: str,
) -> None:
    model = PRESETS[name].model
    expected = None if name in ("demo", "ci") else "imagenet"  # demo and ci ask for random
    assert model.arch in DENSENET_ARCHS and model.pretrained_weights == expected


def test_presets_ask_for_their_initialisation() -> None:
    assert get_preset("paper").model.pretrained_weights == "imagenet"
    assert get_preset("demo").model.pretrained_weights is None
    assert get_preset("ci").model.pretrained_weights is None
    assert get_preset("ci", ["model.pretrained_weights=imagenet"]).model.pretrained_weights
    assert get_preset("paper", ["model.pretrained_weights=null"]).model.pretrained_weights is None
    # An ablation without DenseNet needs no weights to be switched off by hand.
    assert get_preset("paper", ["model.arch=res_se_unet"]).model.pretrained_weights is None
