"""``data.validation``: the per-image limits past which off-screen / off-image gaze fails ingest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from model_lib.config import DataConfig, ValidationConfig, load_params
from model_lib.presets import get_preset

REPO = Path(__file__).resolve().parents[2]
KEYS = ("max_offscreen_fraction", "max_outside_image_fraction")


def test_params_yaml_sets_the_documented_defaults():
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert set(raw["data"]["validation"]) == set(KEYS)
    limits = load_params(REPO / "params.yaml").data.validation
    assert limits == ValidationConfig()
    assert (limits.max_offscreen_fraction, limits.max_outside_image_fraction) == (0.10, 0.50)


def test_defaults_without_a_validation_section(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  native_scale: 0.5\n", encoding="utf-8")
    assert load_params(path).data.validation == ValidationConfig()
    assert DataConfig().validation == ValidationConfig()


def test_params_yaml_values_reach_the_config(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  validation:\n    max_offscreen_fraction: 0.25\n", encoding="utf-8")
    limits = load_params(path).data.validation
    assert limits.max_offscreen_fraction == 0.25
    assert limits.max_outside_image_fraction == ValidationConfig().max_outside_image_fraction


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [0.0, 0.02, 1.0])
def test_a_fraction_in_range_is_accepted(key: str, value: float):
    assert getattr(ValidationConfig(**{key: value}), key) == value


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("value", [-0.01, 1.01, 10, "lots"])
def test_a_fraction_out_of_range_is_refused(key: str, value):
    with pytest.raises(ValidationError, match=key):
        ValidationConfig(**{key: value})


@pytest.mark.parametrize(
    ("text", "match"),
    [("    max_offscreen_fraction: 1.5\n", "max_offscreen_fraction"),
     ("    max_offscreen_share: 0.1\n", "max_offscreen_share"),
     ("    max_outside_image_fraction: -1\n", "max_outside_image_fraction")],
)  # fmt: skip
def test_a_bad_params_yaml_names_the_file_and_the_key(tmp_path: Path, text: str, match: str):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  validation:\n" + text, encoding="utf-8")
    with pytest.raises(ValueError, match=match) as info:
        load_params(path)
    assert str(path) in str(info.value)


def test_frozen():
    with pytest.raises(ValidationError):
        ValidationConfig().max_offscreen_fraction = 0.5  # type: ignore[misc]


def test_a_pipeline_override_sets_the_limit():
    cfg = get_preset("ci", ["data.validation.max_offscreen_fraction=0.2"])
    assert cfg.data.validation.max_offscreen_fraction == 0.2
    with pytest.raises(ValueError, match="max_offscreen_fraction"):
        get_preset("ci", ["data.validation.max_offscreen_fraction=2"])
