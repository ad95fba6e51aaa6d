"""Gaze events -> ground-truth saliency maps, computed directly on the target grid.

The paper's recipe (``heatmap_reference.native_heatmap``) counts gaze points on the native DICOM
grid, blurs the counts with a 501-px Gaussian (sigma 75.5 px, OpenCV's reflect-101 border), divides
by the max and then fits, pads and subsamples the map like the image: about a second per image.

Here the same map is built at the target resolution. The points are splatted bilinearly onto the
nodes of the target grid, and each axis is blurred by one precomputed matrix (target samples x
grid nodes). The matrix holds the Gaussian evaluated at the native positions the target pixels
sample, with the mirror images of reflect-101 folded in and zero rows where a target pixel falls in
the padding. A map is then two small matrix products.

Shapes are (height, width); points are (x, y) = (column, row) in native DICOM pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from model_lib.config import GeometryConfig, HeatmapConfig
from model_lib.data.geometry import (
    PAPER_CANVAS_HW,
    PAPER_TARGET_HW,
    CanvasTransform,
    Oversize,
    display_pads,
    even_shape,
)
from model_lib.data.preprocess import canvas_plans
from model_lib.data.schema import DISPLAY_CANVAS_WH

HeatmapSource = Literal["gaze", "fixations", "fixations_duration"]
Resample = Literal["subsample", "area"]

PAPER_SIGMA_PX = 75.5
"""OpenCV's automatic sigma for the paper's 501-px kernel: 0.3 * ((501 - 1) / 2 - 1) + 0.8."""


def kernel_radius(sigma_px: float) -> int:
    """Half-width (native px) at which the Gaussian is cut, as OpenCV cuts its automatic kernel.

    OpenCV derives sigma from the kernel size as ``0.3 * (radius - 1) + 0.8``; inverting it gives
    radius 250 for sigma 75.5, i.e. the paper's 501-px kernel (about 3.3 sigma for wide kernels).
    """
    return max(1, round((sigma_px - 0.8) / 0.3 + 1.0))


def _reflected_gaussian(
    positions: np.ndarray, sources: np.ndarray, n: int, sigma: float, radius: int
) -> np.ndarray:
    """Response (R, K) at native positions (R,) to unit sources at native positions (K,).

    The image of length ``n`` is extended by reflect-101 mirroring (OpenCV's default border:
    mirror axes on the first and last pixel centres, repeated with period 2 * (n - 1)); the
    Gaussian is cut beyond ``radius``. A source exactly on a mirror axis coincides with its own
    image and is counted twice here; ``gaze_heatmap`` halves such points to compensate.
    """
    if n == 1:
        # Every tap of a one-pixel axis reads the same pixel: the profile is flat.
        return np.ones((positions.size, sources.size))
    period = 2 * (n - 1)
    shifts = period * np.arange(-(radius // period + 1), radius // period + 2)
    images = np.concatenate(
        [sources[None, :] + shifts[:, None], shifts[:, None] - sources[None, :]]
    )
    # Keep only the shifted copies that can reach the image (3 of them when radius < n - 1).
    images = images[((images >= -radius) & (images <= n - 1 + radius)).any(axis=1)]
    d = positions[:, None, None] - images[None, :, :]
    return np.where(np.abs(d) <= radius, np.exp(-0.5 * (d / sigma) ** 2), 0.0).sum(axis=1)


@dataclass(frozen=True)
class _BandedBlur:
    """One axis's blur matrix (out_n, n_nodes), kept as row blocks with the node span each uses.

    A target pixel only sees nodes within the kernel radius (and their mirror images near the
    edges), so each block of rows multiplies its own span: about half the dense work for the
    paper geometry.
    """

    out_n: int
    n_nodes: int
    blocks: tuple[tuple[slice, slice, np.ndarray], ...]
    first_node: int = 0
    """Target coordinate of node 0: negative when the image reaches past the canvas (crop)."""

    @classmethod
    def from_dense(
        cls, matrix: np.ndarray, first_node: int = 0, block_rows: int = 48
    ) -> _BandedBlur:
        blocks = []
        for start in range(0, matrix.shape[0], block_rows):
            rows = slice(start, min(start + block_rows, matrix.shape[0]))
            used = np.flatnonzero(matrix[rows].any(axis=0))
            if used.size:
                nodes = slice(int(used[0]), int(used[-1]) + 1)
                block = np.ascontiguousarray(matrix[rows, nodes], dtype=np.float32)
                block.setflags(write=False)  # shared through the cache
                blocks.append((rows, nodes, block))
        return cls(
            out_n=matrix.shape[0],
            n_nodes=matrix.shape[1],
            blocks=tuple(blocks),
            first_node=first_node,
        )

    def along_rows(self, a: np.ndarray) -> np.ndarray:
        """``matrix @ a``: (n_nodes, k) -> (out_n, k)."""
        out = np.zeros((self.out_n, a.shape[1]), dtype=np.float32)
        for rows, nodes, block in self.blocks:
            out[rows] = block @ a[nodes]
        return out

    def along_cols(self, a: np.ndarray) -> np.ndarray:
        """``a @ matrix.T``: (k, n_nodes) -> (k, out_n)."""
        out = np.zeros((a.shape[0], self.out_n), dtype=np.float32)
        for rows, nodes, block in self.blocks:
            out[:, rows] = a[:, nodes] @ block.T
        return out


@lru_cache(maxsize=64)
def _blur_matrices(
    transform: CanvasTransform, sigma_px: float, radius: int, resample: Resample
) -> tuple[_BandedBlur, _BandedBlur]:
    """Blur matrices of the y axis (out_h, nodes_y) and the x axis (out_w, nodes_x).

    Node k of an axis is target coordinate ``first_node + k``: from 0, or from below 0 where a
    cropped image starts before the canvas. A target pixel's row is the reflected Gaussian
    response at the native pixels the image takes for that target pixel, weighted as the image
    weights them (``preprocess.canvas_plans``: the fit's area resize, the subsampling or block
    means, zero over padding), so map and image share one geometry. Cached: a dataset has only
    a few image sizes.
    """
    t = transform
    min_x, min_y = t.native_to_target(0, 0)
    max_x, max_y = t.native_to_target(t.native_w - 1, t.native_h - 1)
    first_x, first_y = min(0, math.floor(min_x)), min(0, math.floor(min_y))
    node_x, node_y = t.target_to_native(
        np.arange(first_x, math.floor(max_x) + 2), np.arange(first_y, math.floor(max_y) + 2)
    )
    row_plan, col_plan = canvas_plans(t, resample)
    matrices = []
    for plan, n, nodes, first in (
        (row_plan, t.native_h, node_y, first_y),
        (col_plan, t.native_w, node_x, first_x),
    ):
        positions = plan.index.ravel().astype(np.float64)
        response = _reflected_gaussian(positions, nodes, n, sigma_px, radius)
        response = response.reshape(*plan.index.shape, nodes.size)
        dense = np.einsum("ok,okn->on", plan.weight, response)
        matrices.append(_BandedBlur.from_dense(dense, first_node=first))
    return matrices[0], matrices[1]


def _check_points(
    points_xy: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N, 2) float64 points and (N,) float64 weights (ones when ``weights`` is None)."""
    pts = np.asarray(points_xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"gaze points must have shape (N, 2), got {pts.shape}")
    bad = int((~np.isfinite(pts).all(axis=1)).sum())
    if bad:
        raise ValueError(f"{bad} of {len(pts)} gaze points have NaN or infinite coordinates")
    if weights is None:
        return pts, np.ones(len(pts))
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(pts),):
        raise ValueError(f"weights must have shape ({len(pts)},), got {w.shape}")
    bad = int((~np.isfinite(w) | (w < 0)).sum())
    if bad:
        raise ValueError(f"{bad} of {len(w)} weights are negative, NaN or infinite")
    return pts, w


def gaze_heatmap(
    points_xy: np.ndarray,
    native_hw: tuple[int, int],
    out_hw: tuple[int, int] = PAPER_TARGET_HW,
    sigma_px: float = PAPER_SIGMA_PX,
    weights: np.ndarray | None = None,
    pad_to: tuple[int, int] = PAPER_CANVAS_HW,
    *,
    resample: Resample = "subsample",
    oversize: Oversize = "fit",
) -> np.ndarray:
    """Gaussian-blurred gaze map on the target grid, max-normalised: float32 (out_h, out_w).

    Matches the native recipe (counts at native pixels, Gaussian of ``sigma_px`` native pixels cut
    at ``kernel_radius(sigma_px)``, reflect-101 at the image edges, zero padding, geometry of
    ``CanvasTransform.build(native_hw, out_hw, pad_to, oversize=oversize)``) to a Pearson CC
    above 0.999.

    Args:
        points_xy: (N, 2) native pixel coordinates (x = column, y = row). Each point counts at
            the native pixel that contains it; points outside the image (such as the released
            negative X/Y_ORIGINAL) are dropped.
        native_hw: native image size (height, width).
        out_hw: target size (height, width).
        sigma_px: Gaussian sigma in native pixels (before any fit into the canvas).
        weights: optional (N,) non-negative weights (e.g. fixation durations); None counts.
        pad_to: canvas size (height, width) the image is fitted and centred into.
        resample: how the canvas becomes the target grid, exactly as for the image
            (``preprocess.canvas_plans``): 'subsample' (the paper) or 'area' (block means).
        oversize: a side longer than the canvas is shrunk ('fit') or centre-cropped ('crop'),
            as for the image; gaze in a cropped-off strip still blurs into the kept part.

    Raises:
        ValueError: bad shapes, NaN or infinite coordinates or weights, negative weights, a
            sigma that is not positive, no point inside the image, or a map that is zero
            everywhere (all weights zero).
    """
    if not (math.isfinite(sigma_px) and sigma_px > 0):
        raise ValueError(f"sigma_px must be a positive number, got {sigma_px}")
    pts, weight = _check_points(points_xy, weights)
    height, width = native_hw
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < width) & (pts[:, 1] >= 0) & (pts[:, 1] < height)
    if not inside.any():
        raise ValueError("no gaze point inside the image")
    x = np.floor(pts[inside, 0])
    y = np.floor(pts[inside, 1])
    # Points on a mirror axis (first or last pixel) are their own reflect-101 image, which the
    # blur matrices count twice; halving them per axis restores the native recipe.
    w = weight[inside] * np.where((x == 0) | (x == width - 1), 0.5, 1.0)
    w *= np.where((y == 0) | (y == height - 1), 0.5, 1.0)

    t = CanvasTransform.build(native_hw, out_hw, pad_to, oversize=oversize)
    blur_y, blur_x = _blur_matrices(t, float(sigma_px), kernel_radius(sigma_px), resample)
    tx, ty = t.native_to_target(x, y)
    col = np.floor(tx).astype(np.int64) - blur_x.first_node
    row = np.floor(ty).astype(np.int64) - blur_y.first_node
    tx, ty = tx - blur_x.first_node, ty - blur_y.first_node
    fx, fy = tx - col, ty - row
    n_rows, n_cols = blur_y.n_nodes, blur_x.n_nodes
    flat = np.concatenate([row * n_cols + col + k for k in (0, 1, n_cols, n_cols + 1)])
    share = np.concatenate(
        [w * (1 - fy) * (1 - fx), w * (1 - fy) * fx, w * fy * (1 - fx), w * fy * fx]
    )
    splat = np.bincount(flat, share, minlength=n_rows * n_cols).astype(np.float32)
    heat = blur_y.along_rows(blur_x.along_cols(splat.reshape(n_rows, n_cols)))
    peak = heat.max()
    if not peak > 0:
        raise ValueError("the gaze map is zero everywhere: all weights of the points inside are 0")
    return heat / peak


def sigma_from_degrees(
    deg: float,
    native_hw: tuple[int, int],
    viewing_distance_mm: float = 650.0,
    screen_width_mm: float = 596.7,
    screen_px_w: int = 1920,
) -> float:
    """A sigma in degrees of visual angle -> native DICOM pixels for an image of ``native_hw``.

    The angle spans 2 * d * tan(deg / 2) mm on the screen, i.e. that many screen pixels at
    ``screen_px_w / screen_width_mm`` px per mm. The image was shown letterboxed at 1:1 in the
    1920-wide display canvas, ``display_pads`` wide; one shown pixel spans even-width / shown
    width native pixels, the horizontal scale of the released gaze mapping.
    """
    if not (math.isfinite(deg) and deg > 0):
        raise ValueError(f"sigma in degrees must be a positive number, got {deg}")
    screen_px = 2 * viewing_distance_mm * math.tan(math.radians(deg) / 2) * screen_px_w
    screen_px /= screen_width_mm
    _, _, left, right = display_pads(native_hw)
    shown_w = DISPLAY_CANVAS_WH[0] - left - right
    return screen_px * even_shape(native_hw)[1] / shown_w


def event_weights(source: HeatmapSource, durations: np.ndarray | None) -> np.ndarray | None:
    """Per-event weights for a map source: None (counts) or the fixation durations (FPOGD, s)."""
    if source in ("gaze", "fixations"):
        return None
    if source == "fixations_duration":
        if durations is None:
            raise ValueError("source 'fixations_duration' needs the fixation durations (FPOGD)")
        return np.asarray(durations, dtype=np.float64)
    raise ValueError(f"unknown heatmap source {source!r}")


def heatmap_for_events(
    x: np.ndarray,
    y: np.ndarray,
    durations: np.ndarray | None,
    source: HeatmapSource | None,
    native_hw: tuple[int, int],
    cfg: HeatmapConfig,
    geometry: GeometryConfig,
) -> np.ndarray:
    """The configured map for one image's events (N,): float32 (target_h, target_w), max 1.

    ``source`` None means ``cfg.source``. The sigma is ``cfg.sigma_deg`` converted to native
    pixels when set, otherwise ``cfg.sigma_px``. Raises ValueError as ``gaze_heatmap`` does.
    """
    weights = event_weights(cfg.source if source is None else source, durations)
    sigma = cfg.sigma_px
    if cfg.sigma_deg is not None:
        sigma = sigma_from_degrees(
            cfg.sigma_deg,
            native_hw,
            viewing_distance_mm=cfg.viewing_distance_mm,
            screen_width_mm=cfg.screen_width_mm,
        )
    points = np.column_stack([np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)])
    # The released mapping marks off-image gaze as (-1, -1) scaled and truncated toward zero:
    # small negatives on real images, but exactly (0, 0) on images under about a third of real
    # size. Drop that marker so it never becomes a blob in the corner.
    on_image = ~((points[:, 0] == 0) & (points[:, 1] == 0))
    if weights is not None:
        weights = weights[on_image]
    return gaze_heatmap(
        points[on_image],
        native_hw,
        out_hw=geometry.target_hw,
        sigma_px=sigma,
        weights=weights,
        pad_to=geometry.pad_to,
        resample=geometry.resample,
        oversize=geometry.oversize,
    )
