"""What is wrong (or merely different) in one synthetic image: class findings and severity.

Severity varies per case and some abnormal cases are nearly invisible, while normal images carry
distractors (breast shadows, ECG leads, a band of atelectasis, a higher hemidiaphragm), so that a
small CNN learns the classes well but not perfectly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NORMAL, CHF, PNEUMONIA = 0, 1, 2
SIDES: tuple[str, ...] = ("right", "left")
"""The patient's sides. On a PA image the patient's right is on the image's left."""
ZONES: tuple[str, ...] = ("upper", "mid", "lower")


@dataclass(frozen=True)
class Body:
    """What stays the same between two images of one patient."""

    size: float
    """Thorax size relative to the average (about 0.88-1.12)."""
    heart_ratio: float
    """Cardiothoracic ratio of the healthy heart."""
    breasts: bool
    dome_gap: float
    """How much higher the right hemidiaphragm sits than the left (thorax units)."""
    shoulders: float
    """Half-width of the shoulders (thorax units)."""


@dataclass(frozen=True)
class Consolidation:
    """A patchy lobar opacity; its place is given relative to the lung zone it sits in."""

    side: str
    zone: str
    along: float
    """Vertical position inside the zone, 0 top .. 1 bottom."""
    across: float
    """Horizontal position in the free lung at that level, 0 medial .. 1 lateral."""
    radius: float
    """Thorax units."""
    density: float
    """0..1: how close to soft-tissue opacity the densest part gets."""


@dataclass(frozen=True)
class Findings:
    """Everything the renderer, the reports and the reading need to know about one image."""

    label: int
    severity: float
    """0..1; 0 for normal images."""
    ctr: float
    """Cardiothoracic ratio (heart width / inner thoracic width)."""
    edema: float
    """0..1 strength of the perihilar (bat-wing) haze."""
    effusion: tuple[float, float]
    """Fluid height (thorax units) at the (right, left) costophrenic angle; 0 = none."""
    redistribution: float
    """0..1 upper-zone vessel prominence."""
    consolidation: Consolidation | None
    elevated_side: str | None
    """Side of an elevated hemidiaphragm, if any."""
    hyperaeration: bool
    atelectasis: bool
    """A thin band of linear atelectasis in one lower zone (a distractor in every class)."""
    devices: bool
    """ECG leads on the chest."""


def sample_body(rng: np.random.Generator, gender: str) -> Body:
    return Body(
        size=float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12)),
        heart_ratio=float(np.clip(rng.normal(0.44, 0.035), 0.36, 0.53)),
        breasts=gender == "F" and rng.random() < 0.85,
        dome_gap=float(rng.uniform(0.0, 0.05)),
        shoulders=float(rng.uniform(0.6, 0.7)),
    )


def sample_findings(rng: np.random.Generator, label: int, body: Body) -> Findings:
    """Class findings with a random severity, Beta(2.6, 1.2): 1 abnormal case in 50 below 0.2."""
    severity = 0.0 if label == NORMAL else float(rng.beta(2.6, 1.2))
    ctr = body.heart_ratio + rng.normal(0.0, 0.01)
    edema, redistribution = 0.0, 0.0
    effusion = (0.0, 0.0)
    consolidation = None
    if label == CHF:
        ctr += 0.02 + 0.12 * severity + rng.normal(0.0, 0.02)
        edema = severity * rng.uniform(0.2, 0.8)
        redistribution = severity * rng.uniform(0.0, 1.0)
        effusion = tuple(
            float(severity * rng.uniform(0.04, 0.16))
            if rng.random() < 0.2 + 0.4 * severity
            else 0.0
            for _ in SIDES
        )
    elif label == PNEUMONIA:
        consolidation = Consolidation(
            side=SIDES[int(rng.random() < 0.45)],
            zone=ZONES[rng.choice(3, p=[0.25, 0.3, 0.45])],
            along=float(rng.uniform(0.3, 0.7)),
            across=float(rng.uniform(0.2, 0.8)),
            radius=float(rng.uniform(0.14, 0.24)),
            density=float(0.7 + 0.3 * severity),
        )
        if rng.random() < 0.2 * severity:
            effusion = (0.06, 0.0) if consolidation.side == "right" else (0.0, 0.06)
    return Findings(
        label=label,
        severity=severity,
        ctr=float(np.clip(ctr, 0.34, 0.7)),
        edema=float(edema),
        effusion=(float(effusion[0]), float(effusion[1])),
        redistribution=float(redistribution),
        consolidation=consolidation,
        elevated_side=SIDES[int(rng.random() < 0.4)] if rng.random() < 0.05 else None,
        hyperaeration=bool(rng.random() < 0.06),
        atelectasis=bool(rng.random() < 0.1),
        devices=bool(rng.random() < (0.12 if label == NORMAL else 0.25)),
    )
