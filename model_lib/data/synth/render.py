"""Pixels of a synthetic frontal chest X-ray.

The smooth part (soft tissue, lungs, heart, mediastinum, bones, vessels, findings) is built as an
attenuation map ``D`` on a coarse grid (at most 200 pixels on the long side), turned into display
brightness ``1 - exp(-k D)`` and upsampled bilinearly to the native size; only the quantum noise is
drawn at full resolution. That keeps a 3056x2544 image at a few hundred milliseconds.

Attenuation scale, for orientation: soft tissue ~1.15 at the body's centre, aerated lung ~0.3,
heart ~1.5; a dense consolidation or an effusion brings lung back towards soft tissue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from model_lib.data.synth.anatomy import SIGN, Anatomy, raster
from model_lib.data.synth.findings import SIDES, Body, Findings

COARSE_MAX = 200
"""Longest side of the coarse grid the anatomy is evaluated on."""
_SUPERSAMPLE = 3
_RIB_SPACING = 0.085
AIR = 0.8
"""Attenuation removed by fully aerated lung; a finding that fills the air space adds it back."""


@dataclass(frozen=True)
class _Grid:
    """The coarse grid: unit coordinates of its pixel centres and the polygon transform."""

    u: np.ndarray
    v: np.ndarray
    per_unit: float
    """Coarse pixels per thorax unit."""
    fx: float
    fy: float

    def polygon(self, pts: np.ndarray) -> np.ndarray:
        """Native-pixel polygon -> coarse-grid coordinates (same pixel-centre convention as PIL)."""
        return np.stack([(pts[:, 0] + 0.5) * self.fx - 0.5, (pts[:, 1] + 0.5) * self.fy - 0.5], 1)

    def px(self, units: float) -> int:
        return max(1, round(units * self.per_unit))

    def fine(self, x: float, y: float) -> tuple[float, float]:
        """Native pixel -> coordinates on the supersampled drawing of the coarse grid."""
        k = _SUPERSAMPLE
        return (x + 0.5) * self.fx * k - 0.5, (y + 0.5) * self.fy * k - 0.5


def render(
    anatomy: Anatomy, body: Body, findings: Findings, rng: np.random.Generator
) -> np.ndarray:
    """Display image, (H, W) float32 in [0, 1], bright = dense (MONOCHROME2 sense)."""
    h, w = anatomy.native_hw
    f = max(1, -(-max(h, w) // COARSE_MAX))
    gh, gw = -(-h // f), -(-w // f)
    cols = (np.arange(gw) + 0.5) * (w / gw) - 0.5
    rows = (np.arange(gh) + 0.5) * (h / gh) - 0.5
    u, v = anatomy.placement.to_units(cols[None, :], rows[:, None])
    grid = _Grid(u=u, v=v, per_unit=anatomy.placement.scale * gw / w, fx=gw / w, fy=gh / h)

    lungs = _mask(grid, [anatomy.outlines[f"{s} lung"] for s in SIDES],
                  erase=[anatomy.outlines["heart"], anatomy.outlines["mediastinum"]])  # fmt: skip
    air = _blur(lungs, grid.px(0.015)) * (0.6 + 0.4 * _normalised(_blur(lungs, grid.px(0.08))))
    soft = _soft_tissue(u, v, body)
    d = 1.15 * soft - AIR * air
    d += 0.18 * air * np.clip((0.12 - v) / 0.12, 0, 1)  # apices sit under the shoulders
    d += 0.1 * air * np.clip((v - 0.5) / 0.4, 0, 1)  # bases overlap the diaphragm's slope
    d += 0.35 * _normalised(_blur(_mask(grid, [anatomy.outlines["heart"]]), grid.px(0.04)))
    d += 0.2 * _blur(_mask(grid, [anatomy.outlines["mediastinum"]]), grid.px(0.01))
    d -= 0.3 * _blur(_mask(grid, [anatomy.outlines["trachea"]]), grid.px(0.006))
    d += 0.4 * _blur(_mask(grid, [anatomy.outlines[f"{s} clavicle"] for s in SIDES]), 1)
    d += soft * (_ribs(u, v, max(anatomy.thorax.dome)) + _spine(u, v))
    d += air * _vessels(grid, anatomy, findings, rng)
    d += air * 0.06 * _blur(rng.standard_normal(u.shape), 1)
    d += _findings(grid, anatomy, findings, air, rng)
    d += _distractors(grid, anatomy, body, findings, soft, rng)

    heel = rng.uniform(-0.08, 0.08)  # the anode heel effect: exposure varies across the field
    d *= 1 + heel * (u / 1.2)
    k = rng.uniform(0.9, 1.25)
    coarse = (1 - np.exp(-k * np.clip(d, 0, None))) ** rng.uniform(0.85, 1.15)
    full = Image.fromarray(coarse.astype(np.float32)).resize((w, h), Image.Resampling.BILINEAR)
    image = np.asarray(full, dtype=np.float32).copy()
    image += np.float32(rng.uniform(0.006, 0.02)) * rng.standard_normal((h, w), dtype=np.float32)
    return np.clip(image, 0, 1, out=image)


def _soft_tissue(u: np.ndarray, v: np.ndarray, body: Body) -> np.ndarray:
    """Projected thickness (0..1) of the trunk, a cylinder under sloping shoulders, and the neck."""
    half = body.shoulders - 0.05 * np.clip(v - 0.3, 0, 1)
    across = np.clip(1 - (u / half) ** 2, 0, 1)
    top = -0.14 + 0.2 * (1 - across)
    trunk = np.sqrt(across) / (1 + np.exp(-(v - top) / 0.02))
    neck = 0.75 * np.sqrt(np.clip(1 - (u / 0.24) ** 2, 0, 1))
    return np.maximum(trunk, neck)


def _ribs(u: np.ndarray, v: np.ndarray, floor: float) -> np.ndarray:
    """Posterior ribs (arched bands) and fainter anterior ribs, all evaluated at once.

    The ribs are equally spaced copies of one curve, so the distance to the nearest one is a
    periodic function of ``v - curve(|u|)``. Below ``floor`` (the domes) they fade into the abdomen.
    """
    au = np.abs(u)
    t = au / 0.5
    lateral = np.clip((0.56 - au) / 0.04, 0, 1) * np.clip((au - 0.03) / 0.03, 0, 1)
    lateral *= np.clip((floor + 0.1 - v) / 0.15, 0.15, 1)
    post = _periodic_band(
        v + 0.08 * np.sin(0.9 * np.pi * t) - 0.1 * t**3, 0.0, 10, 0.02 + 0.006 * t
    )
    ant_w = np.clip((au - 0.15) / 0.1, 0, 1) * np.clip((0.5 - au) / 0.05, 0, 1)
    ant = _periodic_band(v - 0.05 - 0.23 * (0.47 - au) / 0.32, 0.0, 7, 0.022)
    return lateral * (0.12 * post + 0.05 * ant_w * ant)


def _periodic_band(w: np.ndarray, first: float, count: int, half: np.ndarray | float) -> np.ndarray:
    """Flat-topped bands of half-width ``half`` centred on first + k * spacing, k < count."""
    phase = (w - first) / _RIB_SPACING
    k = np.round(phase)
    d2 = ((phase - k) * _RIB_SPACING / half) ** 2
    return np.exp(-(d2 * d2 * d2)) * ((k >= 0) & (k < count))


def _spine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vertebral column: a midline band with brighter bodies and darker disc spaces."""
    band = np.clip((0.045 - np.abs(u)) / 0.01, 0, 1)
    bodies = 0.7 + 0.3 * np.cos(np.pi * v / 0.07) ** 2
    return 0.15 * band * bodies * (v > -0.4)


def _vessels(
    grid: _Grid, anatomy: Anatomy, findings: Findings, rng: np.random.Generator
) -> np.ndarray:
    """Branching pulmonary vessels fanning out from the hila; upper ones stronger in CHF."""
    gh, gw = grid.u.shape
    img = Image.new("L", (gw * _SUPERSAMPLE, gh * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(img)
    scale = anatomy.placement.scale
    for side in SIDES:
        s = SIGN[side]
        hx, hy = anatomy.landmarks[f"{side} hilum"]
        for angle in np.linspace(-1.3, 1.4, 11) + rng.normal(0, 0.12, 11):
            gain = 1 + (1.2 * findings.redistribution if angle < -0.3 else 0.0)
            length = 0.2 * scale * float(rng.uniform(0.8, 1.2))
            _branch(draw, grid, (hx, hy), float(np.arctan2(np.sin(angle), s * np.cos(angle))),
                    length, 0.014 * scale, gain, rng, depth=1)  # fmt: skip
    hila = sum(
        np.exp(-((grid.u - pu) ** 2 + (grid.v - pv) ** 2) / (2 * 0.035**2))
        for pu, pv in (anatomy.placement.to_units(*anatomy.landmarks[f"{s} hilum"]) for s in SIDES)
    )
    return 0.4 * _blur(_coverage(img), 1) + 0.3 * hila


def _branch(
    draw: ImageDraw.ImageDraw,
    grid: _Grid,
    start: tuple[float, float],
    angle: float,
    length: float,
    width: float,
    gain: float,
    rng: np.random.Generator,
    depth: int,
) -> None:
    """One vessel segment (native-pixel sizes), then two longer, thinner children."""
    end = (start[0] + math.cos(angle) * length, start[1] + math.sin(angle) * length)
    draw.line([grid.fine(*start), grid.fine(*end)], fill=min(255, round(150 * gain)),
              width=max(1, round(width * grid.fx * _SUPERSAMPLE)))  # fmt: skip
    if depth > 0:
        for turn in (-0.35, 0.35):
            _branch(draw, grid, end, angle + turn + float(rng.normal(0, 0.1)), length * 0.9,
                    width * 0.6, gain, rng, depth - 1)  # fmt: skip


def _findings(
    grid: _Grid,
    anatomy: Anatomy,
    findings: Findings,
    air: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Added attenuation of the findings: consolidation, edema, effusions, atelectasis.

    Each fills (part of) the air space, so it adds back a share of the attenuation ``air`` removed.
    """
    u, v = grid.u, grid.v
    th = anatomy.thorax
    out = np.zeros_like(u)
    c = findings.consolidation
    if c is not None:
        cu, cv = anatomy.placement.to_units(*anatomy.landmarks["consolidation"])
        blobs = np.zeros_like(u)
        for _ in range(int(rng.integers(8, 17))):
            bu, bv = cu + rng.normal(0, 0.6 * c.radius), cv + rng.normal(0, 0.6 * c.radius)
            sigma = c.radius * rng.uniform(0.2, 0.45)
            blobs += rng.uniform(0.5, 1.0) * np.exp(
                -((u - bu) ** 2 + (v - bv) ** 2) / (2 * sigma**2)
            )
        texture = _normalised(_blur(rng.standard_normal(u.shape), 1))
        patchy = _normalised(blobs) * (0.4 + 0.8 * texture)
        fill = np.clip((patchy - 0.1) / 0.45, 0, 1)
        out += AIR * c.density * fill * air
    if findings.edema > 0:
        haze = np.zeros_like(u)
        for side, (hu, hv) in zip(SIDES, th.hila, strict=True):
            su, sv = 0.12 + 0.06 * findings.edema, 0.16 + 0.06 * findings.edema
            pu = hu + SIGN[side] * 0.07
            haze += np.exp(-(((u - pu) / su) ** 2) / 2 - (((v - hv - 0.04) / sv) ** 2) / 2)
        haze += 0.3 * np.clip((v - 0.4) / 0.5, 0, 1)
        out += AIR * np.minimum(0.75 * findings.edema * haze, 1) * air
    for side, height in zip(SIDES, findings.effusion, strict=True):
        if height <= 0:
            continue
        # The fluid level rises laterally (a meniscus), filling the costophrenic angle first.
        au = np.abs(u)
        rise = height * (0.3 + 0.7 * np.clip((au - 0.1) / 0.38, 0, 1) ** 2)
        level = th.diaphragm_y(side, au) - rise
        fluid = 1 / (1 + np.exp(-(v - level) / 0.012))
        out += AIR * fluid * air * (np.sign(u) == SIGN[side])
    if findings.atelectasis:
        s = SIGN[SIDES[int(rng.integers(2))]]
        y0 = th.dome[0] - rng.uniform(0.1, 0.2)
        along = np.clip((np.abs(u) - 0.15) / 0.25, 0, 1) * (np.sign(u) == s)
        band = np.exp(-(((v - y0 - 0.05 * along) / 0.008) ** 2)) * (along > 0) * (along < 1)
        out += 0.5 * AIR * band * air
    return out


def _distractors(
    grid: _Grid,
    anatomy: Anatomy,
    body: Body,
    findings: Findings,
    soft: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Normal variation every class has: breast shadows, stomach gas, ECG leads, a side marker."""
    u, v = grid.u, grid.v
    th = anatomy.thorax
    out = np.zeros_like(u)
    if body.breasts:
        for side, dome in zip(SIDES, th.dome, strict=True):
            cu, cv = SIGN[side] * 0.28, dome - 0.05
            sv = np.where(v < cv, 0.12, 0.05)  # the lower edge of a breast shadow is sharp
            out += 0.3 * np.exp(-(((u - cu) / 0.17) ** 2) - ((v - cv) / sv) ** 2) * soft
    out -= 0.35 * np.exp(-(((u - 0.22) / 0.08) ** 2) - ((v - th.dome[1] - 0.08) / 0.04) ** 2)
    gh, gw = u.shape
    img = Image.new("L", (gw * _SUPERSAMPLE, gh * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(img)
    scale = anatomy.placement.scale
    h, w = anatomy.native_hw
    if findings.devices:
        r = 0.018 * scale * grid.fx * _SUPERSAMPLE
        for _ in range(int(rng.integers(3, 6))):
            p = anatomy.placement.to_px(
                np.array([[rng.uniform(-0.45, 0.45), rng.uniform(0.1, 0.9)]])
            )
            ax, ay = grid.fine(*p[0])
            draw.ellipse([ax - r, ay - r, ax + r, ay + r], fill=255)
            wire_end = grid.fine(w / 2 + rng.normal(0, 30), h / 2 + rng.normal(0, 30))
            draw.line([(ax, ay), wire_end], fill=90, width=1)
    if rng.random() < 0.35:
        x = (0.05 if rng.random() < 0.5 else 0.9) * w
        corner = grid.fine(x, 0.05 * h)
        far = grid.fine(x + 0.04 * scale, 0.05 * h + 0.05 * scale)
        draw.rectangle([corner, far], fill=255)
    return out + 1.2 * _coverage(img)


def _mask(
    grid: _Grid, polygons: Sequence[np.ndarray], erase: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """Anti-aliased coverage (0..1) of native-pixel polygons on the coarse grid."""
    gh, gw = grid.u.shape
    fine = raster(gh, gw, [grid.polygon(p) for p in polygons],
                  erase=[grid.polygon(p) for p in erase], supersample=_SUPERSAMPLE)  # fmt: skip
    return _coverage(Image.fromarray(fine))


def _coverage(img: Image.Image) -> np.ndarray:
    """A supersampled 0/255 drawing -> (gh, gw) float coverage in [0, 1]."""
    return np.asarray(img.reduce(_SUPERSAMPLE), dtype=np.float64) / 255


def _blur(a: np.ndarray, r: int) -> np.ndarray:
    """Smooth blur (two box passes of radius ``r`` per axis; edges extended).

    Running sums rather than BLAS or FFT convolutions, whose summation order depends on the
    machine, so the same seed gives the same pixels everywhere.
    """
    n = 2 * r + 1
    for _ in range(2):
        for _ in range(2):
            padded = np.concatenate(
                [np.repeat(a[:, :1], r + 1, 1), a, np.repeat(a[:, -1:], r, 1)], 1
            )
            c = np.cumsum(padded, axis=1)
            a = (c[:, n:] - c[:, :-n]) / n
        a = a.T
    return a


def _normalised(a: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a flat input gives zeros."""
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)
