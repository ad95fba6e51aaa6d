"""Coordinate systems and the transforms between them.

Three grids matter:
- the eye-tracking screen (1920x1080) on which the radiologist saw a letterboxed image;
- the native DICOM pixel grid (row 0 at the top, column 0 at the left), where X/Y_ORIGINAL live;
- the model grid: the native image fitted into a centred canvas (3200x2560 in the paper), then
  sampled down to the target size (320x256).

Shapes are (height, width); points are (x, y) = (column, row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from model_lib.data.schema import DISPLAY_CANVAS_WH, SCREEN_WH

PAPER_CANVAS_HW: tuple[int, int] = (3200, 2560)
PAPER_TARGET_HW: tuple[int, int] = (320, 256)

Oversize = Literal["fit", "crop"]
"""What happens to a side longer than the canvas: shrink the image to fit, or centre-crop it."""


def display_pads(native_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Letterbox pads (top, bottom, left, right) of the 1920x1024 display canvas.

    Reproduces the release's float arithmetic (``int`` truncation), which is why pads may
    differ by one pixel between the two sides.
    """
    h, w = native_hw
    canvas_w, canvas_h = DISPLAY_CANVAS_WH
    ratio = canvas_h / max(h, w)
    shown_h, shown_w = int(h * ratio), int(w * ratio)
    left = (canvas_w - shown_w) // 2
    top = (canvas_h - shown_h) // 2
    return top, canvas_h - shown_h - top, left, canvas_w - shown_w - left


def even_shape(native_hw: tuple[int, int]) -> tuple[int, int]:
    """The release rounds each odd dimension up to even before mapping gaze."""
    h, w = native_hw
    return h + h % 2, w + w % 2


def screen_to_native(
    fpog_x: np.ndarray,
    fpog_y: np.ndarray,
    pads: tuple[int, int, int, int],
    native_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Map screen fractions (FPOGX, FPOGY) to X_ORIGINAL, Y_ORIGINAL exactly as released.

    Points outside the shown image (strict inequality) become small negative integers in both
    coordinates. The vertical scale uses the 1080-pixel screen height although the pads assume a
    1024-pixel canvas: a known quirk of the release, kept on purpose.
    """
    top, bottom, left, right = pads
    screen_w, screen_h = SCREEN_WH
    h_even, w_even = even_shape(native_hw)
    eye_x = np.asarray(fpog_x, dtype=np.float64) * screen_w
    eye_y = np.asarray(fpog_y, dtype=np.float64) * screen_h
    inside = (
        (left < eye_x) & (eye_x < screen_w - right) & (top < eye_y) & (eye_y < screen_h - bottom)
    )
    x_shown = np.where(inside, eye_x - left, -1.0)
    y_shown = np.where(inside, eye_y - top, -1.0)
    x = np.trunc(w_even / (screen_w - left - right) * x_shown).astype(np.int64)
    y = np.trunc(h_even / (screen_h - top - bottom) * y_shown).astype(np.int64)
    return x, y


def native_to_screen(
    x: np.ndarray,
    y: np.ndarray,
    pads: tuple[int, int, int, int],
    native_hw: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`screen_to_native` for points inside the image (screen fractions)."""
    top, bottom, left, right = pads
    screen_w, screen_h = SCREEN_WH
    h_even, w_even = even_shape(native_hw)
    eye_x = np.asarray(x, dtype=np.float64) * (screen_w - left - right) / w_even + left
    eye_y = np.asarray(y, dtype=np.float64) * (screen_h - top - bottom) / h_even + top
    return eye_x / screen_w, eye_y / screen_h


@dataclass(frozen=True)
class CanvasTransform:
    """Native image -> centred canvas -> target grid, and back.

    An image larger than the canvas (a landscape 2544x3056 view in a 3200x2560 canvas) is either
    scaled by ``fit`` (< 1, aspect kept) or, with ``oversize="crop"``, centre-cropped: its offset
    is negative and the columns outside the canvas are dropped. Then it is centred with
    ``offset_y``/``offset_x`` pixels of zero padding, and the canvas is sampled every
    ``stride_y``/``stride_x`` pixels.
    Target pixel (i, j) samples canvas pixel (i * stride_y, j * stride_x).
    """

    native_h: int
    native_w: int
    fit: float
    offset_y: int
    offset_x: int
    stride_y: float
    stride_x: float
    out_h: int
    out_w: int

    @classmethod
    def build(
        cls,
        native_hw: tuple[int, int],
        out_hw: tuple[int, int] = PAPER_TARGET_HW,
        pad_to: tuple[int, int] = PAPER_CANVAS_HW,
        oversize: Oversize = "fit",
    ) -> CanvasTransform:
        h, w = native_hw
        if h <= 0 or w <= 0:
            raise ValueError(f"native size must be positive, got {native_hw}")
        if oversize not in ("fit", "crop"):
            raise ValueError(f"oversize must be 'fit' or 'crop', got {oversize!r}")
        canvas_h, canvas_w = pad_to
        fit = min(1.0, canvas_h / h, canvas_w / w) if oversize == "fit" else 1.0
        fitted_h, fitted_w = fitted_shape(native_hw, fit)
        return cls(
            native_h=h,
            native_w=w,
            fit=fit,
            offset_y=_centre_offset(canvas_h, fitted_h),
            offset_x=_centre_offset(canvas_w, fitted_w),
            stride_y=canvas_h / out_hw[0],
            stride_x=canvas_w / out_hw[1],
            out_h=out_hw[0],
            out_w=out_hw[1],
        )

    @property
    def fitted_hw(self) -> tuple[int, int]:
        return fitted_shape((self.native_h, self.native_w), self.fit)

    def native_to_target(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Native pixel coordinates -> continuous target-grid coordinates (column, row)."""
        tx = (np.asarray(x, dtype=np.float64) * self.fit + self.offset_x) / self.stride_x
        ty = (np.asarray(y, dtype=np.float64) * self.fit + self.offset_y) / self.stride_y
        return tx, ty

    def target_to_native(self, tx: np.ndarray, ty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target-grid coordinates -> native pixel coordinates (to map outputs back)."""
        x = (np.asarray(tx, dtype=np.float64) * self.stride_x - self.offset_x) / self.fit
        y = (np.asarray(ty, dtype=np.float64) * self.stride_y - self.offset_y) / self.fit
        return x, y

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def fitted_shape(native_hw: tuple[int, int], fit: float) -> tuple[int, int]:
    """Size after the aspect-keeping fit; identity when ``fit == 1``."""
    h, w = native_hw
    if fit >= 1.0:
        return h, w
    return max(1, round(h * fit)), max(1, round(w * fit))


def _centre_offset(canvas: int, size: int) -> int:
    """Where a side of ``size`` starts in a centred canvas; negative when it is cropped.

    ``int(d / 2)`` truncates toward zero, as the authors' ``F.pad`` arguments do: for an odd
    overhang the extra pixel is cut on the far side, for an odd gap it is padded there.
    """
    return int((canvas - size) / 2)
