"""The target-grid gaze map against the paper's native recipe, and its input checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from model_lib.config import GeometryConfig, HeatmapConfig
from model_lib.data.geometry import CanvasTransform, display_pads, even_shape
from model_lib.data.heatmap import (
    PAPER_SIGMA_PX,
    event_weights,
    gaze_heatmap,
    heatmap_for_events,
    kernel_radius,
    sigma_from_degrees,
)
from model_lib.data.heatmap_reference import native_heatmap
from model_lib.data.preprocess import to_target


def opencv_sigma(ksize: int) -> float:
    """OpenCV's automatic sigma for a kernel of ``ksize`` pixels."""
    return 0.3 * ((ksize - 1) / 2 - 1) + 0.8


def clustered_points(native_hw: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """(n, 2) integer points in a few clusters, 5% on or next to the image edges."""
    rng = np.random.default_rng(seed)
    h, w = native_hw
    centres = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h], size=(6, 2))
    points = centres[rng.integers(0, 6, n)] + rng.normal(0, 0.07 * min(h, w), size=(n, 2))
    edge = rng.integers(0, n, n // 20)
    points[edge[::2], 0] = rng.choice([0, 1, w - 2, w - 1], len(edge[::2]))
    points[edge[1::2], 1] = rng.choice([0, 1, h - 2, h - 1], len(edge[1::2]))
    return np.floor(np.clip(points, 0, [w - 1, h - 1]))


def inside_mask(transform: CanvasTransform) -> np.ndarray:
    """(out_h, out_w) True where the target pixel samples the image, not the padding."""
    fitted_h, fitted_w = transform.fitted_hw
    rows = np.rint(np.arange(transform.out_h) * transform.stride_y)
    cols = np.rint(np.arange(transform.out_w) * transform.stride_x)
    in_rows = (rows >= transform.offset_y) & (rows < transform.offset_y + fitted_h)
    in_cols = (cols >= transform.offset_x) & (cols < transform.offset_x + fitted_w)
    return in_rows[:, None] & in_cols[None, :]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# (name, native_hw, pad_to, out_hw, ksize, n points, weighted). The native recipe takes about a
# second per full-size image, so only the two common views run at full size; the odd and the
# small geometry run at half scale (canvas, kernel and image halved, the same target grid).
NATIVE_CASES = [
    ("portrait", (3056, 2544), (3200, 2560), (320, 256), 501, 1500, False),
    ("landscape needs fit", (2544, 3056), (3200, 2560), (320, 256), 501, 1400, False),
    ("odd 3050x2539 at half scale", (1525, 1269), (1600, 1280), (320, 256), 251, 800, False),
    (
        "small 2022x1736 at half scale, weighted",
        (1011, 868),
        (1600, 1280),
        (320, 256),
        251,
        300,
        True,
    ),
    ("764x636, stride 2.5", (764, 636), (800, 640), (320, 256), 125, 1000, False),
]


@pytest.mark.parametrize(
    ("native_hw", "pad_to", "out_hw", "ksize", "n", "weighted"),
    [case[1:] for case in NATIVE_CASES],
    ids=[case[0] for case in NATIVE_CASES],
)
def test_matches_native_recipe(native_hw, pad_to, out_hw, ksize, n, weighted):
    points = clustered_points(native_hw, n, seed=n)
    weights = np.random.default_rng(1).uniform(0.01, 0.5, n) if weighted else None
    fast = gaze_heatmap(points, native_hw, out_hw, opencv_sigma(ksize), weights, pad_to)
    native = native_heatmap(points, native_hw, pad_to, out_hw, ksize, weights)

    assert fast.shape == out_hw
    assert fast.dtype == np.float32
    assert fast.max() == 1.0
    assert pearson(fast, native) >= 0.999
    np.testing.assert_allclose(fast, native / native.max(), atol=5e-3)
    outside = ~inside_mask(CanvasTransform.build(native_hw, out_hw, pad_to))
    assert outside.any()
    assert not fast[outside].any()


def test_area_resample_matches_native_block_means():
    native_hw, pad_to, out_hw, ksize = (764, 636), (800, 640), (320, 256), 125
    points = clustered_points(native_hw, 600, seed=3)
    fast = gaze_heatmap(
        points, native_hw, out_hw, opencv_sigma(ksize), None, pad_to, resample="area"
    )
    native = native_heatmap(points, native_hw, pad_to, out_hw, ksize, resample="area")
    np.testing.assert_allclose(fast, native / native.max(), atol=5e-3)
    assert not np.array_equal(
        fast, gaze_heatmap(points, native_hw, out_hw, opencv_sigma(ksize), None, pad_to)
    )


@pytest.mark.parametrize("resample", ["subsample", "area"])
def test_map_is_sampled_like_the_image(resample):
    # The native map pushed through the image's own geometry (fit, pad, sampling) must be the
    # fast map: a fractional stride and a fit make any mismatch of the two geometries visible.
    native_hw, pad_to, out_hw, ksize = (900, 700), (800, 640), (320, 256), 125
    points = clustered_points(native_hw, 500, seed=11)
    native_map = native_heatmap(points, native_hw, native_hw, native_hw, ksize)
    transform = CanvasTransform.build(native_hw, out_hw, pad_to)
    assert transform.fit < 1
    image_side = to_target(native_map, transform, resample)
    fast = gaze_heatmap(
        points, native_hw, out_hw, opencv_sigma(ksize), None, pad_to, resample=resample
    )
    np.testing.assert_allclose(fast, image_side, atol=5e-3)


@pytest.mark.parametrize(
    ("native_hw", "ksize"),
    [((120, 90), 41), ((41, 30), 101), ((2, 7), 11)],
    ids=["reflect once", "kernel wider than the image", "two rows"],
)
def test_equals_native_blur_at_stride_one(native_hw, ksize):
    # With the target grid equal to the native grid the splatting is exact, so the map must be
    # OpenCV's reflect-101 blur itself, edge pixels and repeated reflections included. (OpenCV
    # takes kernels of 9 px or less from fixed tables, not from its sigma formula: avoid them.)
    h, w = native_hw
    points = np.array([[0, 0], [w - 1, h - 1], [0, h // 2], [w // 3, 0], [w // 2, h // 3]] * 3)
    points = np.concatenate([points, clustered_points(native_hw, 20, seed=h)])
    fast = gaze_heatmap(points, native_hw, native_hw, opencv_sigma(ksize), None, native_hw)
    native = native_heatmap(points, native_hw, native_hw, native_hw, ksize)
    np.testing.assert_allclose(fast, native / native.max(), atol=1e-5)


def test_kernel_radius_inverts_opencv_sigma():
    for ksize in (9, 41, 125, 501):
        assert kernel_radius(opencv_sigma(ksize)) == (ksize - 1) // 2
    assert opencv_sigma(501) == pytest.approx(PAPER_SIGMA_PX)


def test_points_outside_are_dropped_and_count_at_their_pixel():
    native_hw = (3056, 2544)
    points = clustered_points(native_hw, 200, seed=5)
    outside = np.array([[-2, -2], [-2, 100], [2544, 10], [10, 3056], [5000, 5000]])
    base = gaze_heatmap(points, native_hw)
    assert np.array_equal(gaze_heatmap(np.concatenate([points, outside]), native_hw), base)
    assert np.array_equal(gaze_heatmap(points + 0.7, native_hw), base)


def test_weights_act_as_repeated_points():
    native_hw = (2544, 3056)
    points = clustered_points(native_hw, 50, seed=6)
    counts = np.random.default_rng(6).integers(0, 4, 50)
    weighted = gaze_heatmap(points, native_hw, weights=counts.astype(float))
    repeated = gaze_heatmap(np.repeat(points, counts, axis=0), native_hw)
    np.testing.assert_allclose(weighted, repeated, rtol=1e-5, atol=1e-6)
    assert not np.allclose(weighted, gaze_heatmap(points, native_hw), atol=1e-3)


@pytest.mark.parametrize(
    ("points", "weights", "message"),
    [
        ([[1.0, 2.0], [np.nan, 3.0], [4.0, np.inf], [5.0, 6.0]], None, "2 of 4 gaze points"),
        ([[-2, -2], [-2, -2]], None, "no gaze point inside the image"),
        (np.empty((0, 2)), None, "no gaze point inside the image"),
        ([[1, 2, 3]], None, r"shape \(N, 2\)"),
        ([[1, 2], [3, 4]], [1.0], r"weights must have shape \(2,\)"),
        ([[1, 2], [3, 4]], [1.0, -0.5], "1 of 2 weights are negative"),
        ([[1, 2], [3, 4]], [0.0, 0.0], "zero everywhere"),
    ],
    ids=["nan", "all outside", "empty", "bad shape", "weights length", "negative", "zero weights"],
)
def test_bad_input_raises(points, weights, message):
    with pytest.raises(ValueError, match=message):
        gaze_heatmap(np.asarray(points, dtype=float), (3056, 2544), weights=weights)


@pytest.mark.parametrize("sigma", [0.0, -3.0, math.nan, math.inf])
def test_bad_sigma_raises(sigma):
    with pytest.raises(ValueError, match="sigma_px must be a positive number"):
        gaze_heatmap(np.array([[10.0, 10.0]]), (3056, 2544), sigma_px=sigma)


def test_sigma_from_degrees():
    portrait = (3056, 2544)
    _, _, left, right = display_pads(portrait)
    native_per_screen_px = even_shape(portrait)[1] / (1920 - left - right)
    one_degree = sigma_from_degrees(1.0, portrait)
    screen_px = one_degree / native_per_screen_px
    assert 20 < screen_px < 60
    assert screen_px == pytest.approx(2 * 650 * math.tan(math.radians(0.5)) * 1920 / 596.7)
    sigmas = [sigma_from_degrees(d, portrait) for d in (0.25, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in itertools.pairwise(sigmas))
    assert sigma_from_degrees(1.0, portrait, viewing_distance_mm=1300.0) > one_degree
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="positive"):
            sigma_from_degrees(bad, portrait)


def test_heatmap_for_events_picks_source_sigma_and_geometry():
    native_hw = (2022, 1736)
    points = clustered_points(native_hw, 120, seed=7)
    x, y = points[:, 0], points[:, 1]
    durations = np.random.default_rng(7).uniform(0.05, 0.6, 120)
    geometry = GeometryConfig()
    counts = gaze_heatmap(points, native_hw)

    gaze = heatmap_for_events(x, y, durations, "gaze", native_hw, HeatmapConfig(), geometry)
    assert np.array_equal(gaze, counts)
    by_duration = heatmap_for_events(
        x, y, durations, None, native_hw, HeatmapConfig(source="fixations_duration"), geometry
    )
    assert np.array_equal(by_duration, gaze_heatmap(points, native_hw, weights=durations))
    assert not np.allclose(by_duration, counts, atol=1e-3)

    degrees = HeatmapConfig(source="fixations", sigma_px=10.0, sigma_deg=1.0)
    wide = heatmap_for_events(x, y, None, None, native_hw, degrees, geometry)
    sigma = sigma_from_degrees(1.0, native_hw)
    assert np.array_equal(wide, gaze_heatmap(points, native_hw, sigma_px=sigma))

    small_area = GeometryConfig(target_hw=(160, 128), resample="area")
    mapped = heatmap_for_events(x, y, None, "gaze", native_hw, HeatmapConfig(), small_area)
    expected = gaze_heatmap(points, native_hw, out_hw=(160, 128), resample="area")
    assert np.array_equal(mapped, expected)


def test_event_weights():
    durations = np.array([0.1, 0.2])
    assert event_weights("gaze", durations) is None
    assert event_weights("fixations", None) is None
    np.testing.assert_array_equal(event_weights("fixations_duration", durations), durations)
    with pytest.raises(ValueError, match="needs the fixation durations"):
        event_weights("fixations_duration", None)
    with pytest.raises(ValueError, match="unknown heatmap source 'saccades'"):
        event_weights("saccades", durations)


def test_the_released_off_image_marker_is_not_gaze_on_small_images() -> None:
    # On images under about a third of real size the released mapping truncates the
    # off-image marker (-1, -1) to exactly (0, 0); it must not paint the corner.
    from model_lib.config import GeometryConfig, HeatmapConfig
    from model_lib.data.heatmap import heatmap_for_events

    geometry = GeometryConfig(target_hw=(40, 32), pad_to=(800, 640))
    cfg = HeatmapConfig(sigma_px=18.9)
    x = np.array([300.0, 310.0, 0.0, 0.0, 0.0])
    y = np.array([380.0, 390.0, 0.0, 0.0, 0.0])
    with_marker = heatmap_for_events(x, y, None, "gaze", (764, 636), cfg, geometry)
    without = heatmap_for_events(x[:2], y[:2], None, "gaze", (764, 636), cfg, geometry)
    np.testing.assert_array_equal(with_marker, without)
