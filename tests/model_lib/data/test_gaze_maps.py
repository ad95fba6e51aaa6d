"""Gaze maps leave out the events outside their image and count them."""

from __future__ import annotations

import numpy as np
import pytest

from model_lib.config import GeometryConfig, HeatmapConfig
from model_lib.data.gaze_maps import DroppedPoints, outside_image
from model_lib.data.heatmap import heatmap_for_events

NATIVE_HW = (305, 254)  # odd height: row 305 exists only in the even-rounded released grid
CFG = HeatmapConfig(sigma_px=8.0)
GEOMETRY = GeometryConfig(target_hw=(40, 32), pad_to=(320, 256))


@pytest.mark.parametrize(
    ("x", "y", "outside"),
    [(10, 20, False), (0, 5, False), (253, 304, False),  # inside, edges included
     (-2, -1, True), (-1, 40, True), (40, -1, True),  # the released off-image marker
     (0, 0, True),  # the marker truncated to zero on small images
     (254, 10, True), (10, 305, True)],  # beyond the image, inside the even-rounded grid
)  # fmt: skip
def test_outside_image(x: float, y: float, outside: bool):
    assert outside_image(np.array([x]), np.array([y]), NATIVE_HW).tolist() == [outside]


def test_the_counted_events_are_the_ones_the_heatmap_leaves_out():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 254, 40), [-2, -1, 0, 254, 30]])
    y = np.concatenate([rng.uniform(0, 305, 40), [-2, 50, 0, 10, 305]])
    dropped = outside_image(x, y, NATIVE_HW)
    assert dropped.sum() == 5
    every = heatmap_for_events(x, y, None, "gaze", NATIVE_HW, CFG, GEOMETRY)
    kept = heatmap_for_events(x[~dropped], y[~dropped], None, "gaze", NATIVE_HW, CFG, GEOMETRY)
    np.testing.assert_array_equal(every, kept)


def test_dropped_points_add_up_and_name_the_worst_image():
    found = DroppedPoints().add("a", 0, 100).add("b", 3, 10).add("c", 5, 100)
    assert (found.events, found.dropped, found.worst) == (210, 8, ("b", 3, 10))
    assert found.describe("gaze") == (
        "dropped 8 of 210 gaze points (3.8%) outside their image (off screen or on the display "
        "padding); most in image b: 3 of 10"
    )
    assert DroppedPoints().describe("fixations_duration") == (
        "dropped 0 of 0 fixation points outside their image (off screen or on the display padding)"
    )
