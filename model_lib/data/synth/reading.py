"""A simulated radiologist's reading: fixations over the anatomy, then Gazepoint-style samples.

The scan path is planned in native image pixels (a first look at the finding, a systematic sweep
of both lungs top to bottom, hila, heart, mediastinum, diaphragm and costophrenic angles, then
revisits weighted towards the findings), mapped to screen fractions with the display geometry,
and sampled at ~62 Hz. X/Y_ORIGINAL are computed back from the written FPOGX/FPOGY with the
released formula (geometry.screen_to_native), so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_lib.data import geometry, schema
from model_lib.data.synth.anatomy import Anatomy
from model_lib.data.synth.findings import CHF, PNEUMONIA, SIDES, ZONES, Findings

SAMPLE_RATE = 61.8
"""Records per second (datasets.md 1.1: dCNT/dTime ~ 61.8)."""
TICKS_PER_SECOND = 10_000_000
DECIMALS = 5
"""Decimals written for every float gaze column except TIMETICK and VID_FRAME."""
_CALIBRATION_HW = (schema.SCREEN_WH[1], schema.SCREEN_WH[0])
_NO_PADS = (0, 0, 0, 0)
_MM_PER_CAMERA_PX = 0.208


@dataclass(frozen=True)
class Target:
    """Where the reader looks next: a point (native px), its spread and how many fixations."""

    x: float
    y: float
    spread: float
    fixations: int
    finding: bool = False


@dataclass(frozen=True)
class Eye:
    """Per-session tracker state: sample period, pupil sizes, head distance."""

    period: float
    """Seconds between records."""
    pupil_px: float
    """Pupil diameter in camera pixels."""
    head_scale: float
    """LPS/RPS: 1 at the calibration distance."""

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Eye:
        return cls(
            period=float(rng.uniform(0.995, 1.005) / SAMPLE_RATE),
            pupil_px=float(rng.uniform(16.0, 20.0)),
            head_scale=float(rng.uniform(1.0, 1.1)),
        )


def quantize(x: np.ndarray, decimals: int = DECIMALS) -> np.ndarray:
    """The double a reader parses back from ``'%.{decimals}f' % x``."""
    return np.rint(np.asarray(x, dtype=np.float64) * 10.0**decimals) / 10.0**decimals


def plan_targets(anatomy: Anatomy, findings: Findings, rng: np.random.Generator) -> list[Target]:
    """The ordered scan path before revisits: first look, systematic sweep, finding dwell."""
    lm, unit = anatomy.landmarks, anatomy.placement.scale

    def at(name: str, spread: float = 0.035, n: int = 1, finding: bool = False) -> Target:
        x, y = lm[name]
        return Target(x, y, spread * unit, n, finding)

    extra = _finding_targets(anatomy, findings)
    plan = [at("heart", 0.08)]
    if extra:
        plan += [extra[0], *extra[1:3]]
    sides = list(SIDES) if rng.random() < 0.7 else list(SIDES[::-1])
    for side in sides:
        plan += [at(f"{side} {zone} zone", 0.06, int(rng.integers(1, 4))) for zone in ZONES]
        plan.append(at(f"{side} costophrenic angle", 0.03))
    for name in ("right hilum", "left hilum", "heart", "mediastinum", "aortic knob", "trachea",
                 "right dome", "left dome", "right clavicle", "left clavicle"):  # fmt: skip
        if rng.random() < 0.8:
            plan.append(at(name, 0.04, int(rng.integers(1, 3))))
    return plan + extra


def revisit_pool(anatomy: Anatomy, findings: Findings) -> tuple[list[Target], np.ndarray]:
    """Targets for the rest of the reading and their probabilities (findings get ~60%)."""
    unit = anatomy.placement.scale
    general = [Target(x, y, 0.05 * unit, 1) for name, (x, y) in anatomy.landmarks.items()
               if name != "consolidation"]  # fmt: skip
    extra = _finding_targets(anatomy, findings)
    weights = np.full(len(general), 0.4 / len(general) if extra else 1 / len(general))
    if extra:
        weights = np.concatenate([weights, np.full(len(extra), 0.6 / len(extra))])
    return general + extra, weights


def fixation_points(
    anatomy: Anatomy, findings: Findings, duration: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixation centres (K, 2) native px, durations (K,) and following gaps (K,) in seconds."""
    h, w = anatomy.native_hw
    pool, weights = revisit_pool(anatomy, findings)
    queue = plan_targets(anatomy, findings, rng)
    points, durations, gaps = [], [], []
    elapsed = 0.0
    while elapsed < duration:
        if not queue:
            queue = [pool[rng.choice(len(pool), p=weights)]]
        target = queue.pop(0)
        for _ in range(target.fixations):
            x = target.x + rng.normal(0, target.spread)
            y = target.y + rng.normal(0, target.spread)
            points.append((float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))))
            median = 0.34 if target.finding else 0.26
            durations.append(float(np.clip(rng.lognormal(np.log(median), 0.45), 0.1, 0.8)))
            blink = rng.random() < 0.05
            gaps.append(float(rng.uniform(0.1, 0.3) if blink else rng.uniform(0.025, 0.06)))
            elapsed += durations[-1] + gaps[-1]
    return np.array(points), np.array(durations), np.array(gaps)


def to_screen(
    points: np.ndarray, native_hw: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """Native fixation centres (K, 2) -> screen fractions (K, 2) with tracker error.

    About 2% of fixations go to the letterbox beside the image, and in one reading out of six one
    lands just below the screen (rare enough that FPOG stays in [0, 1] for more than 99% of the
    records of even a small release). The released formula maps these to negative X/Y_ORIGINAL at
    real image sizes, but below about 0.36 of the real size its truncation towards zero maps them
    to (0, 0).
    """
    pads = geometry.display_pads(native_hw)
    fx, fy = geometry.native_to_screen(points[:, 0], points[:, 1], pads, native_hw)
    screen = np.stack([fx, fy], axis=1) + rng.normal(0, 0.004, points.shape)
    left_edge = pads[2] / schema.SCREEN_WH[0]
    for k in np.flatnonzero(rng.random(len(points)) < 0.02):
        off = rng.uniform(0.005, min(0.05, left_edge))
        x = left_edge - off if rng.random() < 0.5 else 1 - left_edge + off
        screen[k] = (x, rng.uniform(0.2, 0.8))
    if len(points) > 2 and rng.random() < 1 / 6:
        screen[int(rng.integers(1, len(points))), 1] = 1 + rng.uniform(0.001, 0.01)
    return screen


def gaze_samples(
    screen: np.ndarray,
    durations: np.ndarray,
    gaps: np.ndarray,
    eye: Eye,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Gazepoint records of one screen and the row of each fixation's last sample.

    Returns the numeric columns (everything but SESSION_ID, DICOM_ID, TIMETICK, X/Y_ORIGINAL,
    which depend on where the block sits) as quantized arrays, and the fixation rows.
    """
    starts = rng.uniform(0.005, 0.03) + np.concatenate([[0.0], np.cumsum(durations + gaps)[:-1]])
    ends = starts + durations
    n = int(np.floor((ends[-1] - starts[0]) / eye.period)) + 1
    jitter = np.clip(rng.normal(0, 0.02 * eye.period, n), -0.3 * eye.period, 0.3 * eye.period)
    t = starts[0] + np.arange(n) * eye.period + jitter
    t[0] = starts[0]
    kept = rng.random(n) >= 0.004  # dropped packets leave gaps in CNT
    kept[0] = True
    cnt = np.flatnonzero(kept) + int(np.rint(starts[0] / eye.period))
    t = quantize(t[kept])

    owner = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(starts) - 1)
    inside = t <= ends[owner] + 1e-9
    raw = screen[owner] + rng.normal(0, 0.004, (len(t), 2))
    # Between fixations the raw gaze travels to the next one (or the eyes are closed).
    nxt = np.minimum(owner + 1, len(starts) - 1)
    frac = np.clip((t - ends[owner]) / np.maximum(gaps[owner], 1e-6), 0, 1)[:, None]
    raw = np.where(inside[:, None], raw, (1 - frac) * screen[owner] + frac * screen[nxt])
    blink = ~inside & (gaps[owner] >= 0.1)

    # A fixation is a run of inside samples of one owner; ids count the fixations actually seen.
    new_fix = inside & np.concatenate([[True], owner[1:] != owner[:-1]])
    fix_id = np.cumsum(new_fix)
    run = fix_id - 1
    first = np.flatnonzero(new_fix)
    inside_rows = np.flatnonzero(inside)
    last_inside = inside_rows[np.searchsorted(inside_rows, np.append(first[1:], len(t))) - 1]
    fpog, fpogs, fpogd = _running_fixation(raw, t, inside, first, run, last_inside)

    dxy = np.diff(screen, axis=0, prepend=screen[:1]) * schema.SCREEN_WH
    sacc_mag = np.hypot(dxy[:, 0], dxy[:, 1])
    sacc_dir = np.degrees(np.arctan2(dxy[:, 1], dxy[:, 0])) % 360.0

    cols = {
        "CNT": cnt,
        schema.TIME_COLUMN: t,
        "FPOGX": quantize(fpog[:, 0]),
        "FPOGY": quantize(fpog[:, 1]),
        "FPOGS": fpogs,
        "FPOGD": fpogd,
        "FPOGID": fix_id,
        "FPOGV": inside.astype(np.int64),
        "BPOGX": quantize(np.where(blink, 0.0, raw[:, 0])),
        "BPOGY": quantize(np.where(blink, 0.0, raw[:, 1])),
        "BPOGV": (~blink).astype(np.int64),
        **_pupils(t, blink, eye, rng),
        **_blinks(t, blink),
        "SACCADE_MAG": quantize(sacc_mag[owner]),
        "SACCADE_DIR": quantize(sacc_dir[owner]),
        "VID_FRAME": np.zeros(len(t)),
    }
    return cols, last_inside


def calibration_points(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A calibration screen: a few fixations on the central dot, with this session's offset."""
    k = int(rng.integers(3, 7))
    offset = rng.normal(0, 0.01, 2)
    screen = np.array([0.5, 0.5]) + offset + rng.normal(0, 0.004, (k, 2))
    durations = np.clip(rng.lognormal(np.log(0.35), 0.4, k), 0.1, 0.8)
    return screen, durations, rng.uniform(0.025, 0.06, k)


def original_coordinates(
    cols: dict[str, np.ndarray], native_hw: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    """X/Y_ORIGINAL from the written FPOGX/FPOGY; ``None`` for a calibration screen."""
    if native_hw is None:
        return geometry.screen_to_native(cols["FPOGX"], cols["FPOGY"], _NO_PADS, _CALIBRATION_HW)
    pads = geometry.display_pads(native_hw)
    return geometry.screen_to_native(cols["FPOGX"], cols["FPOGY"], pads, native_hw)


def _finding_targets(anatomy: Anatomy, findings: Findings) -> list[Target]:
    """Extra dwell on what is abnormal; empty for normal images and invisible findings."""
    lm, unit = anatomy.landmarks, anatomy.placement.scale
    if findings.label == PNEUMONIA and findings.consolidation is not None:
        x, y = lm["consolidation"]
        spread = 0.5 * findings.consolidation.radius * unit
        return [Target(x, y, spread, 3, True) for _ in range(3)]
    if findings.label == CHF:
        names = ["right heart border", "left heart border", "heart",
                 "right perihilar", "left perihilar"]  # fmt: skip
        names += [f"{s} costophrenic angle" for s, h in zip(SIDES, findings.effusion, strict=True)
                  if h > 0]  # fmt: skip
        return [Target(*lm[n], 0.04 * unit, 2, True) for n in names]
    return []


def _running_fixation(
    raw: np.ndarray,
    t: np.ndarray,
    inside: np.ndarray,
    first: np.ndarray,
    run: np.ndarray,
    last_inside: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FPOG (running mean of the fixation's raw gaze), FPOGS and FPOGD per sample.

    Samples after a fixation (saccade, blink) keep its final values, as the tracker does until
    the next fixation starts.
    """
    weights = inside.astype(float)
    csum = np.cumsum(raw * weights[:, None], axis=0)
    ccount = np.cumsum(weights)
    before = np.where(first > 0, first - 1, 0)
    base_sum = np.where((first > 0)[:, None], csum[before], 0.0)
    base_count = np.where(first > 0, ccount[before], 0.0)
    fpog = (csum - base_sum[run]) / np.maximum(ccount - base_count[run], 1)[:, None]
    fpogs = t[first][run]
    end_t = np.minimum(t, t[last_inside][run])
    return fpog, fpogs, quantize(end_t - fpogs)


def _pupils(
    t: np.ndarray, blink: np.ndarray, eye: Eye, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Pupil centres (camera fractions), diameters (camera px and mm), head scale; 0 in blinks."""
    n = len(t)
    drift = np.cumsum(rng.normal(0, 0.0004, (n, 2)), axis=0)
    slow = np.sin(2 * np.pi * t / rng.uniform(6, 12) + rng.uniform(0, 2 * np.pi))
    valid = (~blink).astype(np.int64)
    out: dict[str, np.ndarray] = {}
    for eye_name, centre_x in (("L", 0.38), ("R", 0.62)):
        diameter = eye.pupil_px * rng.uniform(0.97, 1.03) + 0.6 * slow + rng.normal(0, 0.08, n)
        out[f"{eye_name}PCX"] = quantize(np.where(blink, 0.0, centre_x + drift[:, 0]))
        out[f"{eye_name}PCY"] = quantize(np.where(blink, 0.0, 0.5 + drift[:, 1]))
        out[f"{eye_name}PD"] = quantize(np.where(blink, 0.0, diameter))
        out[f"{eye_name}PS"] = quantize(np.where(blink, 0.0, eye.head_scale + 0.002 * slow))
        out[f"{eye_name}PV"] = valid
        out[f"{eye_name}PMM"] = quantize(np.where(blink, 0.0, diameter * _MM_PER_CAMERA_PX))
        out[f"{eye_name}PMMV"] = valid
    return out


def _blinks(t: np.ndarray, blink: np.ndarray) -> dict[str, np.ndarray]:
    """BKID during a blink, BKDUR on the first sample after it, BKPMIN over the last minute."""
    starts = blink & ~np.concatenate([[False], blink[:-1]])
    ids = np.cumsum(starts)
    bkid = np.where(blink, ids, 0)
    after = ~blink & np.concatenate([[False], blink[:-1]])
    bkdur = np.zeros(len(t))
    start_times = t[starts]
    for row in np.flatnonzero(after):
        bkdur[row] = t[row] - start_times[ids[row] - 1]
    started = np.searchsorted(t[starts], t, side="right")
    recent = started - np.searchsorted(t[starts], t - 60.0, side="right")
    return {"BKID": bkid, "BKDUR": quantize(bkdur), "BKPMIN": recent.astype(np.int64)}
