"""Chest anatomy of one synthetic image: outlines in thorax units, placed on the native pixel grid.

Thorax units: 1.0 is the width of the lung fields; the origin is on the midline at the level of
the lung apices and y points to the feet. Sides are the patient's: on a PA image the patient's
right is on the image's left, so right-sided structures have negative x. The same outlines drive
the renderer, the segmentation masks, the bounding boxes and the simulated reading, so all of them
agree with the pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model_lib.data import schema
from model_lib.data.synth.findings import SIDES, ZONES, Body, Consolidation, Findings

SIGN: dict[str, float] = {"right": -1.0, "left": 1.0}
"""Image-x direction of each patient side."""
HALF_WIDTH = 0.48
"""|x| of the lateral lung edge at the costophrenic angles."""
MEDIAL = 0.05
"""|x| of the medial lung edge (hidden behind the mediastinum and heart)."""
Box = tuple[str, float, float, float, float]
"""(bbox_name, x1, x2, y1, y2) in native pixels, the bounding_boxes.csv column order."""
_DOME_X = 0.24
_FIELD_CENTRE = (0.0, 0.45)
"""Point of the thorax placed at the image's reference point."""


@dataclass(frozen=True)
class Thorax:
    """Unit-space geometry the renderer evaluates analytically."""

    dome: tuple[float, float]
    """y of the (right, left) diaphragm dome tops."""
    cp: tuple[float, float]
    """y of the (right, left) costophrenic angles."""
    heart: tuple[float, float, float, float]
    """Heart right border x, left border x, top y, bottom y."""
    hila: tuple[tuple[float, float], tuple[float, float]]

    def diaphragm_y(self, side: str, ax: np.ndarray) -> np.ndarray:
        """y of the diaphragm of ``side`` at distance ``ax`` (>= 0) from the midline."""
        k = SIDES.index(side)
        ax = np.asarray(ax, dtype=float)
        lateral = (np.clip(ax, _DOME_X, None) - _DOME_X) / (HALF_WIDTH - _DOME_X)
        medial = (_DOME_X - np.clip(ax, None, _DOME_X)) / (_DOME_X - MEDIAL)
        return self.dome[k] + (self.cp[k] - self.dome[k]) * lateral**2 + 0.05 * medial**2


@dataclass(frozen=True)
class Placement:
    """Similarity map from thorax units to native pixels (x = column, y = row)."""

    scale: float
    """Pixels per thorax unit."""
    angle: float
    """In-plane tilt, radians."""
    centre_px: tuple[float, float]

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        """(N, 2) unit points -> (N, 2) pixel points."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        d = np.asarray(pts, dtype=float) - _FIELD_CENTRE
        x = self.centre_px[0] + self.scale * (c * d[:, 0] - s * d[:, 1])
        y = self.centre_px[1] + self.scale * (s * d[:, 0] + c * d[:, 1])
        return np.stack([x, y], axis=1)

    def to_units(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (any shape) -> unit coordinates (same shape)."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx = (np.asarray(x, dtype=float) - self.centre_px[0]) / self.scale
        dy = (np.asarray(y, dtype=float) - self.centre_px[1]) / self.scale
        return _FIELD_CENTRE[0] + c * dx + s * dy, _FIELD_CENTRE[1] - s * dx + c * dy


@dataclass(frozen=True)
class Anatomy:
    """One image's anatomy: unit geometry, its placement, and outlines/landmarks in pixels."""

    native_hw: tuple[int, int]
    thorax: Thorax
    placement: Placement
    outlines: dict[str, np.ndarray]
    """Name -> (N, 2) polygon in native pixels: '<side> lung', '<side> clavicle', 'heart',
    'mediastinum', 'trachea', 'aortic knob'."""
    landmarks: dict[str, tuple[float, float]]
    """Name -> (x, y) native pixels: where a reader looks (zones, hila, heart borders, ...) and,
    for pneumonia, 'consolidation' (its centre)."""


def build_anatomy(
    native_hw: tuple[int, int], body: Body, findings: Findings, rng: np.random.Generator
) -> Anatomy:
    """Sample the pose (position, tilt, inspiration) and lay the patient out on the image."""
    thorax = _thorax(body, findings, rng)
    placement = _placement(native_hw, body, rng)
    outlines_u = {
        **{f"{side} lung": _lung(thorax, side) for side in SIDES},
        **{f"{side} clavicle": _clavicle(side, rng) for side in SIDES},
        "heart": _heart(thorax),
        "mediastinum": _mediastinum(thorax),
        "trachea": _trachea(),
        "aortic knob": _ellipse((0.105, 0.27), (0.05, 0.045)),
    }
    landmarks_u = _landmarks(thorax, outlines_u)
    if findings.consolidation is not None:
        landmarks_u["consolidation"] = _consolidation_centre(
            thorax, outlines_u, findings.consolidation
        )
    names = list(landmarks_u)
    points = placement.to_px(np.array([landmarks_u[k] for k in names]))
    return Anatomy(
        native_hw=native_hw,
        thorax=thorax,
        placement=placement,
        outlines={k: placement.to_px(v) for k, v in outlines_u.items()},
        landmarks={k: (float(x), float(y)) for k, (x, y) in zip(names, points, strict=True)},
    )


def zone_bounds(lung: np.ndarray, zone: str) -> tuple[float, float]:
    """Vertical extent (top, bottom) of a lung zone: thirds of the lung's height."""
    top, bottom = float(lung[:, 1].min()), float(lung[:, 1].max())
    k = ZONES.index(zone)
    step = (bottom - top) / 3
    return top + k * step, top + (k + 1) * step


def draw_masks(anatomy: Anatomy) -> dict[str, np.ndarray]:
    """Binary (H, W) uint8 masks (0/255): lungs without the heart, mediastinum, aortic knob."""
    h, w = anatomy.native_hw
    o = anatomy.outlines
    out = {}
    for side in SIDES:
        out[f"{side}_lung"] = raster(
            h, w, [o[f"{side} lung"]], erase=[o["heart"], o["mediastinum"]]
        )
    out["mediastanum"] = raster(h, w, [o["mediastinum"], o["heart"]])
    out["aortic_knob"] = raster(h, w, [o["aortic knob"]])
    return out


def raster(
    h: int,
    w: int,
    polygons: Sequence[np.ndarray],
    erase: Sequence[np.ndarray] = (),
    supersample: int = 1,
) -> np.ndarray:
    """(h, w) uint8 0/255 fill of ``polygons`` (pixel coords) minus ``erase``.

    With ``supersample`` k the fill is drawn k times finer (coordinates scaled accordingly) and
    the result keeps that finer size; callers average it down for anti-aliased edges.
    """
    k = supersample
    img = Image.new("L", (w * k, h * k), 0)
    draw = ImageDraw.Draw(img)
    for polys, fill in ((polygons, 255), (erase, 0)):
        for poly in polys:
            pts = (np.asarray(poly, dtype=float) + 0.5) * k - 0.5
            draw.polygon(pts.ravel().tolist(), fill=fill)
    return np.asarray(img)


def bounding_boxes(anatomy: Anatomy) -> list[Box]:
    """The 17 schema.BBOX_NAMES as (name, x1, x2, y1, y2), integral pixels inside the image."""
    o, lm, s = anatomy.outlines, anatomy.landmarks, anatomy.placement.scale
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for side in SIDES:
        lung = o[f"{side} lung"]
        x1, x2 = float(lung[:, 0].min()), float(lung[:, 0].max())
        for zone in ZONES:
            boxes[f"{side} {zone} lung zone"] = (x1, x2, *zone_bounds(lung, zone))
        boxes[f"{side} lung"] = (x1, x2, float(lung[:, 1].min()), float(lung[:, 1].max()))
        boxes[f"{side} clavicle"] = _extent(o[f"{side} clavicle"])
        boxes[f"{side} costophrenic angle"] = _around(lm[f"{side} costophrenic angle"], 0.07 * s)
        boxes[f"{side} hilar structures"] = _around(lm[f"{side} hilum"], 0.08 * s)
    boxes["cardiac silhouette"] = _extent(o["heart"])
    boxes["trachea"] = _extent(o["trachea"])
    med = o["mediastinum"]
    heart_top = float(o["heart"][:, 1].min())
    upper = med[med[:, 1] <= heart_top]
    boxes["upper mediastinum"] = _extent(upper if len(upper) >= 2 else med)
    h, w = anatomy.native_hw
    return [(name, *_clip_box(boxes[name], h, w)) for name in schema.BBOX_NAMES]


def _thorax(body: Body, findings: Findings, rng: np.random.Generator) -> Thorax:
    dome = rng.uniform(0.8, 0.94) + (0.08 if findings.hyperaeration else 0.0)
    right, left = dome - body.dome_gap, dome
    if findings.elevated_side == "right":
        right -= 0.1
    elif findings.elevated_side == "left":
        left -= 0.1
    depth = 0.09 if not findings.hyperaeration else 0.05
    width = findings.ctr * 2 * HALF_WIDTH
    bottom = max(right, left) + 0.04
    return Thorax(
        dome=(right, left),
        cp=(right + depth, left + depth),
        heart=(-0.34 * width, 0.66 * width, bottom - rng.uniform(0.4, 0.46), bottom),
        hila=((-0.15, 0.43 + rng.uniform(-0.02, 0.02)), (0.15, 0.39 + rng.uniform(-0.02, 0.02))),
    )


def _placement(native_hw: tuple[int, int], body: Body, rng: np.random.Generator) -> Placement:
    """Thorax size follows the shorter usable side, so landscape images get lateral background."""
    h, w = native_hw
    scale = 0.7 * min(w, 0.95 * h) * body.size
    centre = (w / 2 + rng.normal(0, 0.02) * scale, 0.47 * h + rng.normal(0, 0.025) * scale)
    return Placement(scale=scale, angle=float(np.deg2rad(rng.normal(0, 1.5))), centre_px=centre)


def _lung(th: Thorax, side: str) -> np.ndarray:
    s = SIGN[side]
    k = SIDES.index(side)
    theta = np.linspace(np.pi, 0.2 * np.pi, 24)
    cap = np.stack([0.2 + 0.15 * np.cos(theta), 0.14 - 0.14 * np.sin(theta)], axis=1)
    xa, ya = cap[-1]
    t = np.linspace(0, 1, 24)[1:]
    lateral = np.stack(
        [xa + (HALF_WIDTH - xa) * np.sin(t * np.pi / 2) ** 0.8, ya + (th.cp[k] - ya) * t], axis=1
    )
    ax = np.linspace(HALF_WIDTH, MEDIAL, 32)[1:]
    base = np.stack([ax, th.diaphragm_y(side, ax)], axis=1)
    pts = np.concatenate([cap, lateral, base])
    return pts * [s, 1.0]


def _heart(th: Thorax) -> np.ndarray:
    """A tilted super-ellipse whose lower part hides below the diaphragm (clipped there)."""
    xr, xl, top, bottom = th.heart
    cx, rx = (xl + xr) / 2, (xl - xr) / 2
    ry = 0.62 * (bottom - top)
    cy = top + ry
    t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
    x = cx + rx * np.sign(np.cos(t)) * np.abs(np.cos(t)) ** 0.85
    y = cy + ry * np.sign(np.sin(t)) * np.abs(np.sin(t)) ** 0.85
    # Tilt the long axis down towards the patient's left (the apex), about the centre.
    x = x + 0.12 * (y - cy)
    floor = np.where(x < 0, th.diaphragm_y("right", -x), th.diaphragm_y("left", x)) + 0.03
    return np.stack([x, np.minimum(y, floor)], axis=1)


def _mediastinum(th: Thorax) -> np.ndarray:
    """Upper mediastinum from the neck to the heart, with the aortic knob bulging left."""
    y = np.linspace(-0.4, th.heart[2] + 0.06, 30)
    right = -(0.065 + 0.03 * np.clip(y / 0.4, 0, 1))
    left = (
        0.07
        + 0.05 * np.exp(-(((y - 0.27) / 0.05) ** 2))
        + 0.03 * np.exp(-(((y - 0.38) / 0.04) ** 2))
    )
    return np.concatenate([np.stack([left, y], 1), np.stack([right, y], 1)[::-1]])


def _trachea() -> np.ndarray:
    y = np.linspace(-0.4, 0.3, 16)
    x = -0.01 * np.exp(-(((y - 0.25) / 0.08) ** 2))
    return np.concatenate([np.stack([x + 0.022, y], 1), np.stack([x - 0.022, y], 1)[::-1]])


def _clavicle(side: str, rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 1, 24)
    y0 = 0.1 + rng.uniform(-0.02, 0.02)
    x = 0.05 + 0.52 * t
    y = y0 - 0.09 * t + 0.02 * np.sin(2 * np.pi * t)
    half = 0.016 + 0.008 * (np.abs(t - 0.5) * 2) ** 2
    pts = np.concatenate([np.stack([x, y - half], 1), np.stack([x, y + half], 1)[::-1]])
    return pts * [SIGN[side], 1.0]


def _ellipse(centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return np.stack([centre[0] + radii[0] * np.cos(t), centre[1] + radii[1] * np.sin(t)], 1)


def _landmarks(th: Thorax, outlines: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    xr, xl, top, bottom = th.heart
    mid = top + 0.55 * (bottom - top)
    out: dict[str, tuple[float, float]] = {
        "heart": ((xr + xl) / 2, mid),
        "right heart border": (xr, mid),
        "left heart border": (xl + 0.05 * (bottom - top), mid + 0.1),
        "mediastinum": (0.0, 0.2),
        "aortic knob": (0.105, 0.27),
        "trachea": (0.0, 0.1),
    }
    for side, (hx, hy) in zip(SIDES, th.hila, strict=True):
        s, k = SIGN[side], SIDES.index(side)
        lung = outlines[f"{side} lung"]
        out[f"{side} hilum"] = (hx, hy)
        out[f"{side} perihilar"] = (hx + s * 0.1, hy + 0.03)
        out[f"{side} costophrenic angle"] = (s * (HALF_WIDTH - 0.04), th.cp[k] - 0.04)
        out[f"{side} dome"] = (s * _DOME_X, th.dome[k])
        out[f"{side} clavicle"] = (s * 0.3, 0.06)
        for zone in ZONES:
            y0, y1 = zone_bounds(lung, zone)
            x = 0.32 if zone == "lower" else 0.27
            out[f"{side} {zone} zone"] = (s * x, min((y0 + y1) / 2, th.dome[k] - 0.08))
    return out


def _consolidation_centre(
    th: Thorax, outlines: dict[str, np.ndarray], c: Consolidation
) -> tuple[float, float]:
    """Centre inside the named zone, in free lung (lateral to the heart, above the diaphragm)."""
    s = SIGN[c.side]
    y0, y1 = zone_bounds(outlines[f"{c.side} lung"], c.zone)
    y = y0 + c.along * (y1 - y0)
    heart_edge = -th.heart[0] if c.side == "right" else th.heart[1]
    inner = max(0.12, heart_edge + 0.05) if y > th.heart[2] else 0.12
    outer = HALF_WIDTH - 0.07
    x = inner + c.across * max(outer - inner, 0.0)
    y = min(y, float(th.diaphragm_y(c.side, x)) - 0.04)
    return s * x, max(y, y0 + 0.02)


def _extent(pts: np.ndarray) -> tuple[float, float, float, float]:
    return (
        float(pts[:, 0].min()),
        float(pts[:, 0].max()),
        float(pts[:, 1].min()),
        float(pts[:, 1].max()),
    )


def _around(p: tuple[float, float], half: float) -> tuple[float, float, float, float]:
    return p[0] - half, p[0] + half, p[1] - half, p[1] + half


def _clip_box(
    box: tuple[float, float, float, float], h: int, w: int
) -> tuple[float, float, float, float]:
    """Round outwards to whole pixels and keep a non-empty box inside [0, w-1] x [0, h-1]."""
    x1 = min(max(np.floor(box[0]), 0.0), w - 2.0)
    y1 = min(max(np.floor(box[2]), 0.0), h - 2.0)
    x2 = min(max(np.ceil(box[1]), x1 + 1), w - 1.0)
    y2 = min(max(np.ceil(box[3]), y1 + 1), h - 1.0)
    return float(x1), float(x2), float(y1), float(y2)
