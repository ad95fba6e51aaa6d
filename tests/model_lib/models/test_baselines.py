from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from model_lib.models import CenterPriorBaseline, GradCAM, build_model, densenet_grad_cam
from model_lib.models.baselines import to_log_probability_map
from tests.model_lib.models.cases import tiny_config

Edit = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _maps() -> tuple[np.ndarray, np.ndarray]:
    maps = np.zeros((3, 4, 6))
    maps[0] = 1.0  # uniform
    maps[1, 1, 2] = 5.0  # one hot spot
    maps[2, 3, 5] = 0.5
    return maps, np.array([0, 2, 2])


def test_center_prior_predicts_the_mean_normalised_map_and_the_class_prior() -> None:
    maps, labels = _maps()
    model = CenterPriorBaseline.fit(maps, labels)
    out = model(torch.rand(2, 1, 4, 6))
    expected = np.full((4, 6), 1 / 24) / 3
    expected[1, 2] += 1 / 3
    expected[3, 5] += 1 / 3
    assert out["saliency"].shape == (2, 1, 4, 6)
    np.testing.assert_allclose(out["saliency"].exp()[1, 0].numpy(), expected, rtol=1e-4)
    # Laplace-smoothed frequencies: (1 + 1, 0 + 1, 2 + 1) / (3 + 3).
    np.testing.assert_allclose(out["logits"].exp()[0].numpy(), [2 / 6, 1 / 6, 3 / 6], rtol=1e-6)
    assert out["logits"].shape == (2, 3)


def test_center_prior_accepts_channel_maps_and_resizes_to_the_input() -> None:
    maps, labels = _maps()
    model = CenterPriorBaseline.fit(maps[:, None], labels, num_classes=4)
    out = model(torch.rand(1, 1, 9, 13))
    assert out["saliency"].shape == (1, 1, 9, 13)
    assert out["logits"].shape == (1, 4)
    torch.testing.assert_close(out["saliency"].exp().sum(), torch.tensor(1.0))
    assert torch.isfinite(out["saliency"]).all()


def test_center_prior_state_dict_round_trips() -> None:
    maps, labels = _maps()
    model = CenterPriorBaseline.fit(maps, labels)
    empty = CenterPriorBaseline(torch.zeros(4, 6), torch.zeros(3))
    empty.load_state_dict(model.state_dict())
    x = torch.rand(1, 1, 4, 6)
    for key, value in model(x).items():
        torch.testing.assert_close(empty(x)[key], value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m, y: (m, y[:2]), r"labels: expected shape \(3,\)"),
        (lambda m, y: (m, np.array([0, 1, 3])), r"labels\[2\]: 3 is not in \[0, 3\)"),
        (lambda m, y: (m, np.array([0.0, 1.0, 2.0])), "integer class indices"),
        (lambda m, y: (m[:, :, :, None], y), r"maps: expected \(N, H, W\)"),
        (lambda m, y: (np.where(np.arange(3)[:, None, None] == 1, -m, m), y), r"maps\[1\]"),
        (lambda m, y: (m * (np.arange(3) != 2)[:, None, None], y), r"maps\[2\]: .* not all zero"),
        (lambda m, y: (np.where(m == 1.0, np.nan, m), y), r"maps\[0\]"),
    ],
)
def test_center_prior_names_the_bad_field_or_row(edit: Edit, match: str) -> None:
    maps, labels = edit(*_maps())
    with pytest.raises(ValueError, match=match):
        CenterPriorBaseline.fit(maps, labels)


def test_log_probability_map_is_finite_and_uniform_for_an_empty_map() -> None:
    maps = torch.zeros(2, 1, 5, 4)
    maps[0, 0, 2, 1] = 3.0
    log_p = to_log_probability_map(maps)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p.exp().sum(dim=(1, 2, 3)), torch.ones(2))
    assert log_p[0].exp().max() > 0.99
    torch.testing.assert_close(log_p[1].exp(), torch.full((1, 5, 4), 1 / 20))


class _BrightDark(nn.Module):
    """Toy classifier features: channel 0 is the image, channel 1 its negative, at 1/4 size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(torch.cat([x, 1 - x], dim=1), 4)


def _toy_grad_cam() -> GradCAM:
    # Class 0 = "bright" evidence (channel 0), class 1 = "dark" evidence (channel 1).
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        head[2].weight.copy_(torch.eye(2))
        head[2].bias.zero_()
    return GradCAM(_BrightDark(), head)


def test_grad_cam_is_highest_where_the_class_evidence_is() -> None:
    x = torch.zeros(1, 1, 16, 24)
    x[..., 4:8, 12:20] = 1.0
    inside = torch.zeros(16, 24, dtype=torch.bool)
    inside[4:8, 12:20] = True
    cam = _toy_grad_cam()
    # Mostly dark image: the predicted class is 1.
    predicted = cam(x)
    assert predicted["logits"].argmax().item() == 1
    bright = cam(x, target=torch.tensor([0]))["saliency"].exp()[0, 0]
    dark = predicted["saliency"].exp()[0, 0]
    assert bright.shape == dark.shape == (16, 24)
    torch.testing.assert_close(bright.sum(), torch.tensor(1.0))
    assert bright[inside].mean() > 10 * bright[~inside].mean()
    # Bilinear upsampling of the 1/4-size map blurs the edge; the dark map is still lowest inside.
    assert dark[~inside].mean() > 2 * dark[inside].mean()
    assert inside.flatten()[dark.argmin()]


def test_densenet_grad_cam_shape_and_logits() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config("dual_unet")).eval()
    x = torch.rand(2, 1, 72, 56)
    cam = densenet_grad_cam(model)
    with torch.no_grad():
        out = cam(x, target=torch.tensor([0, 2]))
        reference = model.forward_densenet(x)["densenet_logits"]
    assert set(out) == {"logits", "saliency"}
    assert out["saliency"].shape == (2, 1, 72, 56)
    torch.testing.assert_close(out["saliency"].exp().sum(dim=(1, 2, 3)), torch.ones(2))
    torch.testing.assert_close(out["logits"], reference)
    assert all(p.grad is None for p in model.parameters())
