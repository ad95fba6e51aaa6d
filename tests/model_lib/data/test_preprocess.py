from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_lib.config import GeometryConfig
from model_lib.data import dicom_io
from model_lib.data.dicom_io import read_image
from model_lib.data.geometry import CanvasTransform
from model_lib.data.preprocess import axis_plan, preprocess_image, to_target
from tests.model_lib.data.test_dicom_io import write_dicom


def area_reference(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Exact area resize the slow way: split every pixel into out x out sub-pixels, then
    average blocks of in x in sub-pixels."""
    for axis, n_out in enumerate(out_hw):
        n_in = x.shape[axis]
        fine = np.repeat(x.astype(np.float64), n_out, axis=axis)
        shape = list(fine.shape)
        shape[axis : axis + 1] = [n_out, n_in]
        x = fine.reshape(shape).mean(axis=axis + 1)
    return x


def naive_canvas(pixels: np.ndarray, t: CanvasTransform, pad_to: tuple[int, int]) -> np.ndarray:
    """The paper's recipe literally: (resize,) then zero-pad centred to the full canvas."""
    fitted = area_reference(pixels, t.fitted_hw) if t.fit < 1 else pixels.astype(np.float64)
    canvas = np.zeros(pad_to, dtype=np.float64)
    h, w = fitted.shape
    canvas[t.offset_y : t.offset_y + h, t.offset_x : t.offset_x + w] = fitted
    return canvas


def naive_subsample(canvas: np.ndarray, t: CanvasTransform) -> np.ndarray:
    rows = np.rint(np.arange(t.out_h) * t.stride_y).astype(int)
    cols = np.rint(np.arange(t.out_w) * t.stride_x).astype(int)
    out = canvas[np.ix_(rows, cols)]
    return out / out.max() if out.max() > 0 else out


def naive_area(canvas: np.ndarray, t: CanvasTransform) -> np.ndarray:
    out = area_reference(canvas, (t.out_h, t.out_w))
    return out / out.max() if out.max() > 0 else out


def random_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# native (H, W), canvas (H, W), target (H, W)
FIT_CASES = [
    ((61, 50), (80, 60), (8, 6)),  # portrait, odd, both pads
    ((50, 61), (80, 70), (8, 7)),  # landscape but fits
    ((80, 60), (80, 60), (8, 6)),  # exactly the canvas
    ((7, 9), (80, 60), (8, 6)),  # tiny: most samples fall in padding
    ((305, 254), (320, 256), (32, 30)),  # stride 10 rows, 8.53 columns
    ((61, 50), (80, 60), (32, 25)),  # strides 2.5 and 2.4: rounding picks the pixel
]
SHRINK_CASES = [
    ((50, 61), (40, 40), (8, 8)),  # landscape shrunk by 40/61
    ((97, 31), (60, 60), (12, 10)),  # tall, shrunk by 60/97, stride 5 x 6
    ((90, 120), (60, 50), (7, 9)),  # non-integer strides and fit
]


@pytest.mark.parametrize(("native", "pad_to", "out"), FIT_CASES)
def test_subsample_equals_the_materialised_canvas(native, pad_to, out) -> None:
    pixels = random_image(native)
    t = CanvasTransform.build(native, out, pad_to)
    assert t.fit == 1.0
    expected = naive_subsample(naive_canvas(pixels, t, pad_to), t).astype(np.float32)
    got = to_target(pixels, t)
    assert got.dtype == np.float32 and got.shape == out
    np.testing.assert_array_equal(got, expected)


def test_subsample_is_every_tenth_canvas_pixel() -> None:
    pixels = random_image((61, 50), seed=3)
    t = CanvasTransform.build((61, 50), (8, 6), (80, 60))
    canvas = naive_canvas(pixels, t, (80, 60)).astype(np.float32)
    sliced = canvas[::10, ::10]
    np.testing.assert_array_equal(to_target(pixels, t), sliced / sliced.max())


@pytest.mark.parametrize(("native", "pad_to", "out"), SHRINK_CASES)
def test_subsample_after_area_shrink(native, pad_to, out) -> None:
    pixels = random_image(native, seed=1)
    t = CanvasTransform.build(native, out, pad_to)
    assert t.fit < 1
    expected = naive_subsample(naive_canvas(pixels, t, pad_to), t)
    np.testing.assert_allclose(to_target(pixels, t), expected, atol=1e-6)


@pytest.mark.parametrize(("native", "pad_to", "out"), FIT_CASES + SHRINK_CASES)
def test_area_is_the_mean_of_each_canvas_cell(native, pad_to, out) -> None:
    pixels = random_image(native, seed=2)
    t = CanvasTransform.build(native, out, pad_to)
    expected = naive_area(naive_canvas(pixels, t, pad_to), t)
    np.testing.assert_allclose(to_target(pixels, t, "area"), expected, atol=1e-6)


def test_area_shrink_matches_block_means_for_whole_factors() -> None:
    pixels = random_image((40, 60), seed=4)
    plan = axis_plan(40, 20, 0, 1.0, 20, "subsample")
    blocks = pixels.reshape(20, 2, 60).mean(axis=1)
    got = (plan.weight[:, :, None] * pixels[plan.index]).sum(axis=1)
    np.testing.assert_allclose(got, blocks, atol=1e-6)


def test_sampled_native_pixel_lands_where_the_transform_maps_it() -> None:
    t = CanvasTransform.build((61, 50), (8, 6), (80, 60))
    pixels = np.zeros((61, 50), dtype=np.float32)
    y, x = 30 - t.offset_y, 40 - t.offset_x  # a native pixel on the sampled grid
    pixels[y, x] = 0.25
    out = to_target(pixels, t)
    tx, ty = t.native_to_target(x, y)
    assert out[int(ty), int(tx)] == 1.0 and out.sum() == 1.0


def test_all_zero_image_stays_zero() -> None:
    t = CanvasTransform.build((61, 50), (8, 6), (80, 60))
    for mode in ("subsample", "area"):
        out = to_target(np.zeros((61, 50), dtype=np.float32), t, mode)
        assert out.shape == (8, 6) and not out.any()


def test_result_max_is_one() -> None:
    t = CanvasTransform.build((61, 50), (8, 6), (80, 60))
    for mode in ("subsample", "area"):
        assert to_target(random_image((61, 50)) * 0.3, t, mode).max() == pytest.approx(1.0)


def test_wrong_shape_and_mode_are_rejected() -> None:
    t = CanvasTransform.build((61, 50), (8, 6), (80, 60))
    with pytest.raises(ValueError, match=r"\(61, 50\)"):
        to_target(np.zeros((50, 61), dtype=np.float32), t)
    with pytest.raises(ValueError, match="resample"):
        to_target(np.zeros((61, 50), dtype=np.float32), t, "bilinear")


GEOMETRIES = [
    GeometryConfig(target_hw=(8, 6), pad_to=(80, 60)),
    GeometryConfig(target_hw=(8, 6), pad_to=(80, 60), resample="area"),
    GeometryConfig(target_hw=(9, 7), pad_to=(40, 44)),  # shrink, non-integer strides
    GeometryConfig(target_hw=(9, 7), pad_to=(40, 44), resample="area"),
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_preprocess_image_equals_read_then_to_target(geometry: GeometryConfig, tmp_path) -> None:
    stored = np.random.default_rng(5).integers(0, 4096, (61, 50)).astype(np.uint16)
    stored[0, 0] |= np.uint16(0xF000)  # unused bits set: must be ignored
    path = write_dicom(
        tmp_path / "a.dcm",
        stored,
        WindowCenter=1800,
        WindowWidth=2400,
        PhotometricInterpretation="MONOCHROME1",
    )
    image, transform, header = preprocess_image(path, geometry)
    decoded = read_image(path)
    assert transform == CanvasTransform.build((61, 50), geometry.target_hw, geometry.pad_to)
    assert header == decoded.header
    np.testing.assert_array_equal(image, to_target(decoded.pixels, transform, geometry.resample))
    assert image.shape == geometry.target_hw and image.dtype == np.float32


def test_preprocess_png(tmp_path: Path) -> None:
    gray = np.random.default_rng(6).integers(0, 256, (61, 50)).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    geometry = GeometryConfig(target_hw=(8, 6), pad_to=(80, 60))
    image, transform, header = preprocess_image(tmp_path / "a.png", geometry)
    assert header == {"Rows": 61, "Columns": 50}
    expected = naive_subsample(naive_canvas(gray / 255.0, transform, (80, 60)), transform)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_subsample_maps_intensities_of_sampled_pixels_only(tmp_path: Path, monkeypatch) -> None:
    sizes: list[int] = []
    original = dicom_io.Intensity.__call__

    def spy(self: dicom_io.Intensity, stored: np.ndarray) -> np.ndarray:
        sizes.append(stored.size)
        return original(self, stored)

    monkeypatch.setattr(dicom_io.Intensity, "__call__", spy)
    path = write_dicom(
        tmp_path / "a.dcm", np.ones((61, 50), np.uint16), WindowCenter=1, WindowWidth=2
    )
    image, _, _ = preprocess_image(path, GeometryConfig(target_hw=(8, 6), pad_to=(80, 60)))
    # rows 1, 11, ..., 51 (6) and columns 5, 15, ..., 45 (5) fall inside the image
    assert sizes == [30]
    assert image.sum() == 30
