"""The predicted saliency drawn over the image the model saw, as a PNG with a colour legend.

Drawn with matplotlib's object API on an Agg canvas (no pyplot): no global figure state, so the
server can render from several threads, and no display is needed.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from model_lib.data.geometry import CanvasTransform

DPI = 100
PANEL_PX = 480
"""Height of the image panel; its width follows the shown region's aspect."""
COLORBAR_PX, MARGIN_PX, TITLE_PX = 110, 20, 60
ASPECT_LIMITS = (0.25, 4.0)
"""Width / height of the panel is clamped here so a degenerate crop still makes a usable PNG."""
CMAP, ALPHA = "turbo", 0.45


def image_box(transform: CanvasTransform) -> tuple[slice, slice]:
    """(rows, columns) of the model grid covered by the native image: the padding the canvas
    added around it is left out, so the overlay keeps the image's own aspect."""
    rows = _span(transform.offset_y, transform.fitted_hw[0], transform.stride_y, transform.out_h)
    cols = _span(transform.offset_x, transform.fitted_hw[1], transform.stride_x, transform.out_w)
    return rows, cols


def overlay_size(shown_hw: tuple[int, int]) -> tuple[int, int]:
    """(width, height) in pixels of the PNG :func:`render_overlay` makes for a region of
    ``shown_hw`` model pixels."""
    h, w = shown_hw
    aspect = min(max(w / h, ASPECT_LIMITS[0]), ASPECT_LIMITS[1])
    panel_w = round(PANEL_PX * aspect)
    return panel_w + COLORBAR_PX + 2 * MARGIN_PX, PANEL_PX + TITLE_PX + MARGIN_PX


def render_overlay(
    image: np.ndarray,
    saliency: np.ndarray,
    title: str,
    region: tuple[slice, slice] | None = None,
) -> bytes:
    """PNG bytes: ``image`` (H, W) in [0, 1] in grey, ``saliency`` (H, W) as a colour map with
    transparency over it, a colour bar, and ``title`` above.

    The map is shown relative to its peak over the whole grid (the model's maps sum to 1, so raw
    values depend on the image size); ``region`` (from :func:`image_box`) crops both.
    """
    if image.shape != saliency.shape or image.ndim != 2:
        raise ValueError(f"image {image.shape} and saliency {saliency.shape}: need equal (H, W)")
    peak = float(saliency.max(initial=0.0))
    relative = saliency / peak if peak > 0 else saliency
    if region is not None:
        image, relative = image[region], relative[region]
    width, height = overlay_size(image.shape)
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    panel_w = width - COLORBAR_PX - 2 * MARGIN_PX
    ax = fig.add_axes((MARGIN_PX / width, MARGIN_PX / height, panel_w / width, PANEL_PX / height))
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="bilinear", aspect="auto")
    shown = ax.imshow(
        relative, cmap=CMAP, vmin=0.0, vmax=1.0, alpha=ALPHA, interpolation="bilinear",
        aspect="auto",
    )  # fmt: skip
    ax.set_axis_off()
    cax = fig.add_axes(
        ((MARGIN_PX + panel_w + 15) / width, MARGIN_PX / height, 18 / width, PANEL_PX / height)
    )
    bar = fig.colorbar(shown, cax=cax)
    bar.solids.set_alpha(1.0)  # the legend shows the colours themselves, not their blend
    bar.set_label("predicted saliency (relative to its peak)", fontsize=9)
    fig.suptitle(title, fontsize=11, y=1 - 8 / height, va="top")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _span(offset: int, fitted: int, stride: float, n_out: int) -> slice:
    start = int(np.floor(offset / stride))
    stop = int(np.ceil((offset + fitted) / stride))
    start = min(max(start, 0), n_out - 1)
    return slice(start, min(max(stop, start + 1), n_out))
