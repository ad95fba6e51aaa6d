"""``paper-exact`` preprocessing against the authors' recipe, re-implemented here at native size.

The re-implementation follows their released ``Data/hzhu_data_raw.py`` step by step with the
libraries they use (pydicom's ``pixel_array``, ``torch.nn.functional.pad``, OpenCV's
``GaussianBlur``, strided slicing), and shares no code with ``model_lib``. On a landscape image
their negative pad crops 248 px from each side; ``paper`` shrinks the image instead.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F

from model_lib.data.heatmap import gaze_heatmap
from model_lib.data.preprocess import preprocess_image
from model_lib.presets import get_preset
from tests.model_lib.data.test_dicom_io import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

LANDSCAPE_HW = (2544, 3056)
"""A real MIMIC-CXR landscape size: wider than the 2560-px canvas."""
CANVAS_HW, STEP, KSIZE = (3200, 2560), 10, 501


def _authors_pads(native_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) as their ``process`` computes them (``int`` of a float)."""
    (h, w), (canvas_h, canvas_w) = native_hw, CANVAS_HW
    left, top = int((canvas_w - w) / 2), int((canvas_h - h) / 2)
    return left, canvas_w - w - left, top, canvas_h - h - top


def _authors_subsample(canvas: torch.Tensor) -> torch.Tensor:
    return canvas[0 : CANVAS_HW[0] + 1 : STEP, 0 : CANVAS_HW[1] + 1 : STEP]


def authors_image(path: Path) -> np.ndarray:
    """pixel_array as float32, padded (cropped where negative), every 10th pixel, / max."""
    image = torch.tensor(pydicom.dcmread(path).pixel_array.astype(np.float32))
    image = _authors_subsample(F.pad(image, _authors_pads(tuple(image.shape))))
    return (image / image.max()).numpy()


def authors_map(x: np.ndarray, y: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray:
    """Counts of the integer gaze positions inside the image, 501-px Gaussian, / max, padded
    like the image, subsampled, min-max normalised."""
    h, w = native_hw
    xi, yi = x.astype(np.int32), y.astype(np.int32)
    inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    counts = np.zeros(native_hw, dtype=np.float32)
    np.add.at(counts, (yi[inside], xi[inside]), 1.0)
    blurred = cv2.GaussianBlur(counts, (KSIZE, KSIZE), 0, 0)
    blurred = torch.tensor(blurred / blurred.max())
    heat = _authors_subsample(F.pad(blurred, _authors_pads(native_hw)))
    heat = heat - heat.min()
    return (heat / heat.max()).numpy()


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def landscape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2544 x 3056 MONOCHROME1 DICOM with a window: 'raw' must ignore both."""
    h, w = LANDSCAPE_HW
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    smooth = 2000 + 1500 * np.sin(rows / 97.0) * np.cos(cols / 131.0)
    noise = np.random.default_rng(0).integers(0, 300, size=LANDSCAPE_HW)
    stored = (smooth + noise).astype(np.uint16)
    path = tmp_path_factory.mktemp("authors") / "landscape.dcm"
    return write_dicom(
        path,
        stored,
        PhotometricInterpretation="MONOCHROME1",
        WindowCenter=2000,
        WindowWidth=1000,
    )


@pytest.fixture(scope="module")
def gaze() -> tuple[np.ndarray, np.ndarray]:
    """Gaze over the whole image, a cluster in the strip the crop cuts off on the left (its
    blur still reaches the kept part), and a few samples off the image."""
    rng = np.random.default_rng(1)
    h, w = LANDSCAPE_HW
    x = np.concatenate([rng.uniform(0, w, 400), rng.normal(150, 40, 200), [-3.0, w + 10.0]])
    y = np.concatenate([rng.uniform(0, h, 400), rng.normal(1200, 200, 200), [5.0, -7.0]])
    return x, y


def test_paper_exact_image_is_the_authors_on_a_landscape_dicom(landscape: Path) -> None:
    geometry = get_preset("paper-exact").data.scaled_geometry()
    ours, transform, _ = preprocess_image(landscape, geometry)
    theirs = authors_image(landscape)
    assert ours.shape == theirs.shape == (320, 256)
    assert (transform.fit, transform.offset_x, transform.offset_y) == (1.0, -248, 328)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    # The default shrinks the landscape image instead, and windows and inverts it.
    paper, paper_transform, _ = preprocess_image(
        landscape, get_preset("paper").data.scaled_geometry()
    )
    assert paper_transform.fit < 1.0
    assert _cc(paper, theirs) < 0.9


def test_paper_exact_heatmap_is_the_authors_on_a_landscape_image(
    gaze: tuple[np.ndarray, np.ndarray],
) -> None:
    cfg = get_preset("paper-exact").data
    geometry, heatmap = cfg.scaled_geometry(), cfg.scaled_heatmap()
    x, y = gaze
    ours = gaze_heatmap(
        np.column_stack([x, y]),
        LANDSCAPE_HW,
        out_hw=geometry.target_hw,
        sigma_px=heatmap.sigma_px,
        pad_to=geometry.pad_to,
        resample=geometry.resample,
        oversize=geometry.oversize,
    )
    theirs = authors_map(x, y, LANDSCAPE_HW)
    assert _cc(ours, theirs) >= 0.999
    # Their map is min-max normalised: the training target (sum-normalised) differs only by the
    # minimum, which is 0 here (the canvas keeps zero rows above and below).
    assert theirs.min() == 0.0
    fitted = gaze_heatmap(np.column_stack([x, y]), LANDSCAPE_HW, sigma_px=heatmap.sigma_px)
    assert _cc(fitted, theirs) < 0.99
