"""The paper's image geometry: fit into a centred canvas, sample it down, divide by the max.

paper.md "Data": zero-pad (centred) to 3200 x 2560 and take every 10th pixel, giving 320 x 256.
:class:`~model_lib.data.geometry.CanvasTransform` generalises this to any canvas and target, and
to images larger than the canvas (first shrunk with an exact area resize).

Every step is linear and acts on rows and columns separately, so each output row is a short
weighted sum of native rows (and likewise for columns). :class:`AxisPlan` holds those weights;
applying the two plans touches only the native pixels that matter and never builds the canvas.
For the paper's 'subsample' that is one native pixel per output pixel (about 1% of the image),
which is why :func:`preprocess_image` maps intensities after sampling, not before.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_lib.config import GeometryConfig
from model_lib.data.dicom_io import Header, read_raw
from model_lib.data.geometry import CanvasTransform

RESAMPLE_MODES: tuple[str, ...] = ("subsample", "area")


@dataclass(frozen=True)
class AxisPlan:
    """Output index o along one axis = ``sum_k weight[o, k] * native[index[o, k]]``.

    ``index`` and ``weight`` are (n_out, K); zero weights pad short rows (their index is any
    valid one). Covering only padding gives an all-zero row.
    """

    index: np.ndarray
    weight: np.ndarray

    def used(self) -> np.ndarray:
        """Sorted native indices with a non-zero weight (at least one index, for empty plans)."""
        used = np.unique(self.index[self.weight != 0])
        return used if used.size else np.zeros(1, dtype=np.int64)

    def relative_to(self, used: np.ndarray) -> AxisPlan:
        """The same plan indexing into ``native[used]`` (``used`` from :meth:`used`)."""
        local = np.minimum(np.searchsorted(used, self.index), used.size - 1)
        return AxisPlan(local, self.weight)


def axis_plan(
    n_native: int, n_fitted: int, offset: int, stride: float, n_out: int, resample: str
) -> AxisPlan:
    """Weights from native pixels to output pixels along one axis.

    The native axis (``n_native`` pixels) is area-resized to ``n_fitted`` pixels, placed at
    ``offset`` in a zero canvas, and output ``o`` is canvas pixel ``round(o * stride)``
    ('subsample', round half to even) or the mean of canvas interval
    ``[o * stride, (o + 1) * stride)`` ('area', padding counted as zeros).
    """
    if resample not in RESAMPLE_MODES:
        raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
    o = np.arange(n_out, dtype=np.float64)
    if resample == "subsample":
        start = np.rint(o * stride) - offset
        stop = start + 1.0
        norm = 1.0
    else:
        start = o * stride - offset
        stop = start + stride
        norm = stride
    # Output -> fitted pixels; intervals are in fitted-pixel units.
    fit_index, fit_weight = _overlaps(start, stop, n_fitted)
    fit_weight /= norm
    if n_fitted == n_native:
        return _compact(fit_index, fit_weight, n_native)
    # Fitted pixel r is the mean of native interval [r * q, (r + 1) * q).
    q = n_native / n_fitted
    r = np.arange(n_fitted, dtype=np.float64)
    nat_index, nat_weight = _overlaps(r * q, (r + 1) * q, n_native)
    nat_weight /= q
    index = nat_index[fit_index].reshape(n_out, -1)
    weight = (fit_weight[:, :, None] * nat_weight[fit_index]).reshape(n_out, -1)
    return _compact(index, weight, n_native)


def canvas_plans(transform: CanvasTransform, resample: str) -> tuple[AxisPlan, AxisPlan]:
    """(row plan, column plan) of ``transform``."""
    fitted_h, fitted_w = transform.fitted_hw
    rows = axis_plan(
        transform.native_h,
        fitted_h,
        transform.offset_y,
        transform.stride_y,
        transform.out_h,
        resample,
    )
    cols = axis_plan(
        transform.native_w,
        fitted_w,
        transform.offset_x,
        transform.stride_x,
        transform.out_w,
        resample,
    )
    return rows, cols


def apply_plans(pixels: np.ndarray, rows: AxisPlan, cols: AxisPlan) -> np.ndarray:
    """(H, W) -> (rows n_out, cols n_out) float32: rows first, as they shrink the most."""
    partial = _weighted_take(pixels, rows, axis=0)
    return _weighted_take(partial, cols, axis=1)


def to_target(
    pixels: np.ndarray, transform: CanvasTransform, resample: str = "subsample"
) -> np.ndarray:
    """Native image (H, W) in [0, 1] -> target (out_h, out_w) float32, divided by its max.

    Same as building the zero canvas (after the exact area resize when ``transform.fit < 1``)
    and taking canvas pixel ``(round(i * stride_y), round(j * stride_x))`` ('subsample': for the
    paper's integer strides, the slice ``[::10, ::10]``, bit for bit when ``fit == 1``) or the
    mean of each stride x stride cell ('area'), without building the canvas. An all-zero result
    stays zero.
    """
    if pixels.shape != (transform.native_h, transform.native_w):
        raise ValueError(
            f"pixels have shape {pixels.shape}, the transform expects "
            f"{(transform.native_h, transform.native_w)}"
        )
    rows, cols = canvas_plans(transform, resample)
    return _divide_by_max(apply_plans(pixels, rows, cols))


def geometry_transform(native_hw: tuple[int, int], geometry: GeometryConfig) -> CanvasTransform:
    """The canvas transform ``geometry`` gives an image of ``native_hw``."""
    return CanvasTransform.build(
        native_hw, geometry.target_hw, geometry.pad_to, oversize=geometry.oversize
    )


def preprocess_image(
    path: str | Path, geometry: GeometryConfig
) -> tuple[np.ndarray, CanvasTransform, Header]:
    """Read an image and bring it to ``geometry``: (target (out_h, out_w), transform, header).

    The transform maps gaze points the same way and outputs back to native pixels. The result
    equals ``to_target(read_image(path).pixels, transform, geometry.resample)`` (for
    ``geometry.intensity == "raw"``, of the stored values instead of the windowed pixels), but
    only the native pixels the plans use are decoded to intensities.
    """
    raw = read_raw(path)
    transform = geometry_transform(raw.native_hw, geometry)
    rows, cols = canvas_plans(transform, geometry.resample)
    used_rows, used_cols = rows.used(), cols.used()
    stored = _take(_take(raw.stored, used_rows, axis=0), used_cols, axis=1)
    intensity = raw.intensity if geometry.intensity == "window" else raw.intensity.stored_values()
    partial = apply_plans(
        intensity(stored), rows.relative_to(used_rows), cols.relative_to(used_cols)
    )
    return _divide_by_max(partial), transform, raw.header


def _overlaps(start: np.ndarray, stop: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlap lengths of intervals [start, stop) with unit pixels [t, t + 1), 0 <= t < n.

    Returns (index, weight), both (len(start), K); parts outside [0, n) are dropped.
    """
    start = np.clip(start, 0.0, n)
    stop = np.clip(stop, start, n)
    first = np.floor(start).astype(np.int64)
    span = int(np.max(np.ceil(stop) - first, initial=1))
    t = first[:, None] + np.arange(span)
    weight = np.minimum(stop[:, None], t + 1) - np.maximum(start[:, None], t)
    return np.minimum(t, n - 1), np.clip(weight, 0.0, None)


def _compact(index: np.ndarray, weight: np.ndarray, n_native: int) -> AxisPlan:
    """Merge repeated indices: each row's native indices become one contiguous run."""
    weight = np.where(weight > 0, weight, 0.0)
    low = np.where(weight > 0, index, np.iinfo(np.int64).max).min(axis=1)
    low = np.where(weight.any(axis=1), low, 0)
    pos = np.where(weight > 0, index - low[:, None], 0)
    width = int(pos.max(initial=0)) + 1
    merged = np.zeros((index.shape[0], width), dtype=np.float64)
    np.add.at(merged, (np.arange(index.shape[0])[:, None], pos), weight)
    run = np.minimum(low[:, None] + np.arange(width), n_native - 1)
    return AxisPlan(run, merged.astype(np.float32))


def _weighted_take(x: np.ndarray, plan: AxisPlan, axis: int) -> np.ndarray:
    out: np.ndarray | None = None
    for k in range(plan.index.shape[1]):
        w = plan.weight[:, k]
        if axis == 0:
            term = np.take(x, plan.index[:, k], axis=0) * w[:, None]
        else:
            term = np.take(x, plan.index[:, k], axis=1) * w[None, :]
        out = term if out is None else np.add(out, term, out=out)
    assert out is not None
    return out.astype(np.float32, copy=False)


def _take(x: np.ndarray, used: np.ndarray, axis: int) -> np.ndarray:
    if used.size == x.shape[axis]:
        return x  # every index is used: no copy
    return np.take(x, used, axis=axis)


def _divide_by_max(x: np.ndarray) -> np.ndarray:
    peak = float(x.max(initial=0.0))
    return x / np.float32(peak) if peak > 0 else x
