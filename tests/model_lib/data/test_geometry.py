from __future__ import annotations

import numpy as np
import pytest

from model_lib.data.geometry import (
    CanvasTransform,
    display_pads,
    even_shape,
    native_to_screen,
    screen_to_native,
)


@pytest.mark.parametrize(
    ("native_hw", "pads"),
    [
        ((3056, 2544), (0, 0, 534, 534)),  # portrait, the commonest MIMIC size
        ((2544, 3056), (86, 86, 448, 448)),  # landscape
        ((2022, 1736), (0, 0, 520, 521)),  # odd leftover: right gets the extra pixel
        ((1736, 2022), (72, 73, 448, 448)),
    ],
)
def test_display_pads_match_the_release(native_hw, pads) -> None:
    assert display_pads(native_hw) == pads


def test_pad_invariants_over_real_sizes() -> None:
    for hw in [(3056, 2544), (3050, 2539), (2539, 3050), (2021, 2021), (1449, 1420)]:
        top, bottom, left, right = display_pads(hw)
        assert min(top, bottom, left, right) >= 0
        assert top - bottom in (0, -1) and left - right in (0, -1)
        assert max(1920 - left - right, 1024 - top - bottom) in (1023, 1024)


def test_even_shape_rounds_odd_dims_up() -> None:
    assert even_shape((3050, 2539)) == (3050, 2540)


def test_screen_to_native_reproduces_the_released_sample() -> None:
    # The release's header sample: (X, Y) = (998, 1035) on a 3056x2544 portrait image.
    hw = (3056, 2544)
    pads = display_pads(hw)
    fx, fy = native_to_screen(np.array([998.4]), np.array([1035.4]), pads, hw)
    x, y = screen_to_native(fx, fy, pads, hw)
    assert (x[0], y[0]) == (998, 1035)


def test_outside_points_become_small_negative_pairs() -> None:
    hw = (3056, 2544)
    pads = display_pads(hw)
    x, y = screen_to_native(np.array([0.1, 0.5]), np.array([0.5, 1.2]), pads, hw)
    assert x[0] < 0 and y[0] < 0 and x[0] >= -3 and y[0] >= -3
    assert x[1] < 0 and y[1] < 0


@pytest.mark.parametrize("native_hw", [(3056, 2544), (2544, 3056), (3050, 2539), (611, 509)])
def test_canvas_transform_round_trips(native_hw) -> None:
    t = CanvasTransform.build(native_hw)
    x = np.array([0.0, native_hw[1] - 1.0, 123.5])
    y = np.array([0.0, native_hw[0] - 1.0, 77.25])
    back = t.target_to_native(*t.native_to_target(x, y))
    np.testing.assert_allclose(back, (x, y), atol=1e-9)


def test_landscape_is_fitted_into_the_canvas_keeping_aspect() -> None:
    t = CanvasTransform.build((2544, 3056))
    assert t.fit < 1
    fh, fw = t.fitted_hw
    assert fw == 2560 and fh <= 3200
    assert abs(fh / fw - 2544 / 3056) < 1e-3
    assert t.offset_x == 0 and t.offset_y == (3200 - fh) // 2


def test_portrait_fits_without_scaling() -> None:
    t = CanvasTransform.build((3056, 2544))
    assert t.fit == 1.0 and (t.offset_y, t.offset_x) == (72, 8)
    assert (t.stride_y, t.stride_x) == (10.0, 10.0)


def test_bad_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        CanvasTransform.build((0, 10))
