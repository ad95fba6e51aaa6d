"""The synthetic cohort: who is imaged, with which class, image size, header options and when.

Everything here is table-level and cheap; pixels, gaze and text come later, per image. Shares
that the checks rely on (classes, MONOCHROME1, window kinds, image sizes) are allocated near-evenly
(largest remainder) and then shuffled, so a small cohort still contains every kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_lib.data import schema

WINDOW_KINDS: tuple[str, ...] = ("single", "multi", "none")
"""How the DICOM header states the display window: one value, two values, or not at all."""

# (Rows, Columns) of the eye-gaze subsets (datasets.md 4.3) with shares close to the real ones;
# None stands for the many rare sizes, drawn at random inside the observed ranges.
_SIZES: tuple[tuple[tuple[int, int] | None, float], ...] = (
    ((3056, 2544), 0.40),
    ((2544, 3056), 0.22),
    ((3050, 2539), 0.05),
    ((2539, 3050), 0.05),
    ((2022, 1736), 0.03),
    ((2021, 2021), 0.03),
    ((2022, 2022), 0.02),
    ((1736, 2022), 0.02),
    (None, 0.18),
)
_AGE_WEIGHTS = np.array([132, 140, 185, 194, 216, 216], dtype=float)  # datasets.md 1.3
_MIN_SIDE = 16
SESSION_SIZE = (26, 34)
"""Images per reading session (inclusive bounds); the last session takes what is left."""
CALIBRATION_EVERY = 20
"""A calibration screen follows every 20th image in reading order (datasets.md 1.10 step 4)."""


@dataclass(frozen=True)
class Case:
    """One image of the release and the table-level facts about it."""

    index: int
    """Record number - 1 in master_sheet.csv; also keys the image's random streams."""
    dicom_id: str
    patient_id: int
    study_id: int
    stay_id: int | None
    patient_index: int
    """Keys the patient's random stream, so a patient's images share one body."""
    label: int
    """Index into schema.CLASS_NAMES."""
    native_hw: tuple[int, int]
    gender: str
    age_bin: str
    monochrome1: bool
    window_kind: str
    study_date: str

    @property
    def path(self) -> str:
        return schema.mimic_image_path(self.patient_id, self.study_id, self.dicom_id)


@dataclass(frozen=True)
class Screen:
    """One screen of a reading session: an image, or the calibration screen after one."""

    session_id: int
    case_index: int
    """The image shown, or the image a calibration screen follows."""
    calibration: bool

    def dicom_id(self, cases: list[Case]) -> str:
        full = cases[self.case_index].dicom_id
        return full[: schema.CALIBRATION_ID_LENGTH] if self.calibration else full


def allocate(
    n: int, shares: np.ndarray, rng: np.random.Generator, *, each: bool = False
) -> np.ndarray:
    """Category per item, (n,) int: counts by largest remainder of ``n * shares``, shuffled.

    ``each`` gives every category at least one item when ``n`` allows, taken from the largest.
    """
    shares = np.asarray(shares, dtype=float) / np.sum(shares)
    exact = n * shares
    counts = np.floor(exact).astype(int)
    # Stable sort: ties go to the earlier category, so the result does not depend on the platform.
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    if each and n >= len(shares):
        for k in np.flatnonzero(counts == 0):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return rng.permutation(np.repeat(np.arange(len(shares)), counts))


def scaled_size(native_hw: tuple[int, int], scale: float) -> tuple[int, int]:
    """Scale (Rows, Columns), keeping each side's parity so odd sizes stay odd."""

    def one(side: int) -> int:
        exact = side * scale
        out = round(exact)
        if out % 2 != side % 2:
            out += 1 if exact > out else -1
        while out < _MIN_SIDE:
            out += 2
        return out

    return one(native_hw[0]), one(native_hw[1])


def build_cohort(n_images: int, scale: float, rng: np.random.Generator) -> list[Case]:
    """``n_images`` cases with balanced classes, ~4% two-image patients and one three-image one."""
    labels = allocate(n_images, np.ones(len(schema.CLASS_NAMES)), rng)
    groups = _group_patients(labels, rng)
    patient_ids = _unique_ints(rng, len(groups), 10_000_000)
    study_ids = _unique_ints(rng, n_images, 50_000_000)
    stay_ids = _unique_ints(rng, n_images, 30_000_000)
    dicom_ids = _dicom_ids(rng, n_images)
    sizes = _image_sizes(n_images, rng)
    monochrome1 = allocate(n_images, np.array([0.9, 0.1]), rng, each=True) == 1
    windows = allocate(n_images, np.array([0.7, 0.15, 0.15]), rng, each=True)
    no_stay = allocate(n_images, np.array([0.95, 0.05]), rng, each=True) == 1

    cases: list[Case | None] = [None] * n_images
    age_p = _AGE_WEIGHTS / _AGE_WEIGHTS.sum()
    for p, (members, same_study) in enumerate(groups):
        gender = "F" if rng.random() < 0.46 else "M"
        age = schema.AGE_BINS[rng.choice(len(schema.AGE_BINS), p=age_p)]
        shared_date = _date(rng, 0)
        for visit, i in enumerate(members):
            # A study (and its ED stay and date) is keyed by its first image.
            study = members[0] if same_study else i
            cases[i] = Case(
                index=i,
                dicom_id=dicom_ids[i],
                patient_id=int(patient_ids[p]),
                study_id=int(study_ids[study]),
                stay_id=None if no_stay[study] else int(stay_ids[study]),
                patient_index=p,
                label=int(labels[i]),
                native_hw=scaled_size(sizes[i], scale),
                gender=gender,
                age_bin=age,
                monochrome1=bool(monochrome1[i]),
                window_kind=WINDOW_KINDS[windows[i]],
                study_date=shared_date if same_study else _date(rng, visit),
            )
    return [c for c in cases if c is not None]


def plan_sessions(n_images: int, rng: np.random.Generator) -> list[Screen]:
    """Reading order: the images shuffled into sessions of ~30, calibration after every 20th."""
    order = rng.permutation(n_images)
    screens: list[Screen] = []
    session, left = 1, int(rng.integers(SESSION_SIZE[0], SESSION_SIZE[1] + 1))
    for shown, i in enumerate(order, start=1):
        if left == 0:
            session, left = session + 1, int(rng.integers(SESSION_SIZE[0], SESSION_SIZE[1] + 1))
        screens.append(Screen(session, int(i), calibration=False))
        left -= 1
        if shown % CALIBRATION_EVERY == 0:
            screens.append(Screen(session, int(i), calibration=True))
    return screens


def _group_patients(labels: np.ndarray, rng: np.random.Generator) -> list[tuple[list[int], bool]]:
    """Images per patient and whether they share one study (then they share the class too).

    About 4% of the images come in two-image patients and, from 50 images on, one patient has
    three; groups alternate between one study and several.
    """
    n = len(labels)
    n_pairs = max(1, round(0.04 * n)) if n >= 4 else 0
    n_triples = 1 if n >= 50 else 0
    pool = [int(i) for i in rng.permutation(n)]
    groups: list[tuple[list[int], bool]] = []
    for k, size in enumerate([3] * n_triples + [2] * n_pairs):
        same_study = k % 2 == 0  # alternate, so both kinds exist from two groups on
        first = pool.pop()
        if same_study:
            mates = [i for i in pool if labels[i] == labels[first]][: size - 1]
        else:
            mates = pool[-(size - 1) :]
        if len(mates) < size - 1:
            pool.append(first)
            continue
        for m in mates:
            pool.remove(m)
        groups.append(([first, *mates], same_study))
    groups.extend(([i], False) for i in pool)
    # Patient numbering follows the first image's record, as if the sheet were built patient-wise.
    return sorted(groups, key=lambda g: min(g[0]))


def _unique_ints(rng: np.random.Generator, n: int, base: int) -> np.ndarray:
    """``n`` distinct 8-digit ids starting with base's leading digit."""
    return base + rng.choice(10_000_000, size=n, replace=False)


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct 44-char ids whose 39-char prefixes are distinct too (calibration ids)."""
    ids: list[str] = []
    prefixes: set[str] = set()
    while len(ids) < n:
        groups = rng.integers(0, 2**32, size=5, dtype=np.uint64)
        dicom_id = "-".join(f"{int(g):08x}" for g in groups)
        if dicom_id[: schema.CALIBRATION_ID_LENGTH] not in prefixes:
            prefixes.add(dicom_id[: schema.CALIBRATION_ID_LENGTH])
            ids.append(dicom_id)
    return ids


def _image_sizes(n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Native (Rows, Columns) per image from the 4.3 distribution."""
    kinds = allocate(n, np.array([share for _, share in _SIZES]), rng)
    sizes = []
    for k in kinds:
        fixed = _SIZES[k][0]
        if fixed is not None:
            sizes.append(fixed)
            continue
        rows = int(rng.integers(1900, 3057))
        aspect = rng.uniform(0.8, 1.25) if rng.random() < 0.5 else rng.uniform(1.05, 1.3)
        sizes.append((rows, int(np.clip(round(rows * aspect), 1420, 3056))))
    return sizes


def _date(rng: np.random.Generator, visit: int) -> str:
    """A MIMIC-style shifted date (years 2110-2190), deterministic from the stream."""
    year = 2110 + int(rng.integers(0, 80)) + visit
    return f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
