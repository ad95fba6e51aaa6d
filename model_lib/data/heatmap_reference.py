"""The gaze-map recipe at native resolution: the slow reference for tests and benchmarks.

With ``oversize="crop"`` it is the authors' map (their negative ``F.pad`` crops a landscape
image); with the default ``"fit"`` it is this project's variant, which shrinks such an image
into the canvas instead. Portrait images (the common case) get the same map either way.

Training uses ``model_lib.data.heatmap.gaze_heatmap``, which computes the same map on the target
grid about a thousand times faster.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from model_lib.data.geometry import PAPER_CANVAS_HW, PAPER_TARGET_HW, CanvasTransform, Oversize


def _canvas_to_target(canvas: np.ndarray, out_hw: tuple[int, int], resample: str) -> np.ndarray:
    """Canvas -> target grid: pixel (round(i * stride_y), round(j * stride_x)) ('subsample'),
    or the mean of the canvas over [i * stride_y, (i + 1) * stride_y) x [j * stride_x, ...)
    with fractional pixel overlaps ('area')."""
    samplers = []
    for canvas_n, out_n in zip(canvas.shape, out_hw, strict=True):
        stride = canvas_n / out_n
        start = np.arange(out_n) * stride
        if resample == "subsample":
            samplers.append(np.rint(start).astype(np.int64))
        else:
            c = np.arange(canvas_n)
            overlap = np.minimum(c + 1, start[:, None] + stride) - np.maximum(c, start[:, None])
            samplers.append(np.clip(overlap, 0.0, None) / stride)
    rows, cols = samplers
    if resample == "subsample":
        return canvas[np.ix_(rows, cols)]
    return rows @ canvas @ cols.T


def native_heatmap(
    points_xy: np.ndarray,
    native_hw: tuple[int, int],
    pad_to: tuple[int, int] = PAPER_CANVAS_HW,
    out_hw: tuple[int, int] = PAPER_TARGET_HW,
    ksize: int = 501,
    weights: np.ndarray | None = None,
    resample: Literal["subsample", "area"] = "subsample",
    oversize: Oversize = "fit",
) -> np.ndarray:
    """The map computed at native size: float32 (out_h, out_w). Slow (about 1 s).

    Counts the points inside the image at their native pixels (optionally weighted), blurs with
    ``cv2.GaussianBlur(counts, (ksize, ksize), 0)`` (automatic sigma, 75.5 px for 501; default
    reflect-101 border), divides by the max, fits the map into the canvas with an INTER_AREA
    resize when it is too large (``oversize="crop"``: centre-crops it instead), centres it
    with zero padding and takes every stride-th pixel
    (rounded for fractional strides; 'area': the mean of each stride block instead). The max
    of the result may be a little below 1 because the peak need not fall on a sampled pixel.

    Args:
        points_xy: (N, 2) native pixel coordinates (x = column, y = row).
        native_hw: native image size (height, width).
        pad_to: canvas size (height, width).
        out_hw: target size (height, width).
        ksize: Gaussian kernel size in native pixels (odd).
        weights: optional (N,) weights; None counts.
        resample: 'subsample' (the paper) or 'area'.
    """
    import cv2

    t = CanvasTransform.build(native_hw, out_hw, pad_to, oversize=oversize)
    h, w = native_hw
    pts = np.asarray(points_xy, dtype=np.float64)
    wts = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    counts = np.zeros((h, w), dtype=np.float32)
    np.add.at(counts, (y[inside].astype(np.int64), x[inside].astype(np.int64)), wts[inside])
    heat = cv2.GaussianBlur(counts, (ksize, ksize), 0)
    heat /= heat.max()
    fitted_h, fitted_w = t.fitted_hw
    if t.fit < 1.0:
        heat = cv2.resize(heat, (fitted_w, fitted_h), interpolation=cv2.INTER_AREA)
    canvas = np.zeros(pad_to, dtype=np.float32)
    (dst_y, src_y), (dst_x, src_x) = (
        _placement(t.offset_y, fitted_h, pad_to[0]),
        _placement(t.offset_x, fitted_w, pad_to[1]),
    )
    canvas[dst_y, dst_x] = heat[src_y, src_x]
    return _canvas_to_target(canvas, out_hw, resample).astype(np.float32)


def _placement(offset: int, size: int, canvas: int) -> tuple[slice, slice]:
    """(canvas slice, map slice) of a side of ``size`` placed at ``offset`` (negative: cropped)."""
    start, stop = max(offset, 0), min(offset + size, canvas)
    return slice(start, stop), slice(start - offset, stop - offset)
