"""generate_dataset: a synthetic EGD-CXR release plus the MIMIC-CXR DICOMs it points to.

Layout (the real one, datasets.md 1.2 and 4.1)::

    out_dir/egd-cxr/{master_sheet,fixations,eye_gaze,bounding_boxes}.csv
    out_dir/egd-cxr/audio_segmentation_transcripts/<dicom_id>/{transcript.json, 4 masks, audio}
    out_dir/mimic-cxr/files/pXX/p<subject>/s<study>/<dicom_id>.dcm

Everything is built in a temporary folder beside ``out_dir`` and renamed into place at the end,
so a failure leaves nothing half-written. Every random draw comes from a stream keyed by the seed,
a purpose and a record, so the same seed gives the same bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from model_lib.data import geometry, schema
from model_lib.data.synth import clinical, reading
from model_lib.data.synth.anatomy import Anatomy, Box, bounding_boxes, build_anatomy, draw_masks
from model_lib.data.synth.cohort import Case, Screen, build_cohort, plan_sessions
from model_lib.data.synth.dicom_writer import to_stored, write_dicom
from model_lib.data.synth.findings import Findings, sample_body, sample_findings
from model_lib.data.synth.render import render
from model_lib.data.synth.tables import (
    GazeTableWriter,
    write_bounding_boxes,
    write_master_sheet,
    write_transcript_dir,
)

logger = logging.getLogger(__name__)

# Purposes of the random streams (the first spawn-key element). A study's stream draws what its
# images share (findings, diagnoses, report and CheXpert labels, indication); an image's stream
# draws its pose, pixels and header.
_COHORT, _SESSIONS, _PATIENT, _STUDY, _IMAGE, _READING, _CALIBRATION, _EYE = range(8)
READING_SECONDS = (8.0, 25.0)
_BETWEEN_SCREENS_S = (1.0, 3.0)


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote."""

    n_images: int
    class_counts: Mapping[str, int]
    """schema.CLASS_NAMES -> number of images."""
    egd_root: Path
    images_root: Path
    """Root the master sheet's ``path`` is relative to."""
    seconds: float


@dataclass(frozen=True)
class _Image:
    """What the reading pass needs to remember about a rendered image."""

    anatomy: Anatomy
    findings: Findings
    duration: float


def generate_dataset(
    out_dir: Path, n_images: int, seed: int = 0, scale: float = 1.0, overwrite: bool = False
) -> SynthSummary:
    """Write a synthetic release of ``n_images`` images into ``out_dir`` (see module docstring).

    ``scale`` shrinks the images relative to real MIMIC-CXR sizes (1.0 = about 3056x2544).
    Raises FileExistsError if ``out_dir`` is a non-empty folder and ``overwrite`` is False,
    ValueError for arguments out of range.
    """
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale!r}")
    out_dir = Path(out_dir)
    _check_target(out_dir, overwrite)
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        cases = _write_release(tmp, n_images, seed, scale)
        _check_target(out_dir, overwrite)
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    counts = np.bincount([c.label for c in cases], minlength=len(schema.CLASS_NAMES))
    logger.info("synth: wrote %d images to %s in %.1f s", n_images, out_dir, seconds)
    return SynthSummary(
        n_images=n_images,
        class_counts=MappingProxyType(dict(zip(schema.CLASS_NAMES, counts.tolist(), strict=True))),
        egd_root=out_dir / "egd-cxr",
        images_root=out_dir / "mimic-cxr",
        seconds=seconds,
    )


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _write_release(root: Path, n_images: int, seed: int, scale: float) -> list[Case]:
    egd, images = root / "egd-cxr", root / "mimic-cxr"
    (egd / "audio_segmentation_transcripts").mkdir(parents=True)
    cases = build_cohort(n_images, scale, _rng(seed, _COHORT))
    rows, boxes, rendered = [], [], []
    step = max(1, n_images // 10)
    for case in cases:
        # The first record's study carries a quoted multi-line indication.
        multiline = case.study_id == cases[0].study_id
        row, image_boxes, image = _write_image(egd, images, case, seed, scale, multiline)
        rows.append(row)
        boxes.append((case.dicom_id, image_boxes))
        rendered.append(image)
        if (case.index + 1) % step == 0 or case.index + 1 == n_images:
            logger.info("synth: rendered %d/%d images", case.index + 1, n_images)
    write_master_sheet(egd / "master_sheet.csv", rows)
    write_bounding_boxes(egd / "bounding_boxes.csv", boxes)
    screens = plan_sessions(n_images, _rng(seed, _SESSIONS))
    with GazeTableWriter(egd) as writer:
        _write_readings(writer, screens, cases, rendered, seed)
        logger.info("synth: wrote %d gaze samples, %d fixations", writer.n_samples,
                    writer.n_fixations)  # fmt: skip
    return cases


def _write_image(
    egd: Path, images: Path, case: Case, seed: int, scale: float, multiline: bool
) -> tuple[dict[str, object], list[Box], _Image]:
    """Render one image, write its DICOM and transcript folder; return its sheet row and boxes."""
    body = sample_body(_rng(seed, _PATIENT, case.patient_index), case.gender)
    study_rng = _rng(seed, _STUDY, case.study_id)
    findings = sample_findings(study_rng, case.label, body)
    row = _master_row(case, findings, study_rng, multiline)
    rng = _rng(seed, _IMAGE, case.index)
    anatomy = build_anatomy(case.native_hw, body, findings, rng)
    stored, window = to_stored(render(anatomy, body, findings, rng), case, rng)
    dicom_path = images / case.path
    dicom_path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(dicom_path, stored, window, case, seed, scale)
    duration = float(rng.uniform(*READING_SECONDS))
    spoken = clinical.transcript(clinical.dictation(findings), duration, rng)
    write_transcript_dir(egd / "audio_segmentation_transcripts" / case.dicom_id, spoken,
                         draw_masks(anatomy))  # fmt: skip
    return row, bounding_boxes(anatomy), _Image(anatomy, findings, duration)


def _master_row(
    case: Case, findings: Findings, rng: np.random.Generator, multiline: bool
) -> dict[str, object]:
    row: dict[str, object] = {
        "dicom_id": case.dicom_id,
        "path": case.path,
        "study_id": case.study_id,
        "patient_id": case.patient_id,
        "stay_id": case.stay_id,
        "gender": case.gender,
        "anchor_age": case.age_bin,
        **dict(zip(schema.PAD_COLUMNS, geometry.display_pads(case.native_hw), strict=True)),
    }
    diagnoses = clinical.ed_diagnoses(case, rng)
    for k in range(9):
        title, code = diagnoses[k] if k < len(diagnoses) else (None, None)
        row[f"dx{k + 1}"], row[f"dx{k + 1}_icd"] = title, code
    row["normal_reports"] = clinical.normal_report(findings, rng)
    row.update({col: int(case.label == k) for k, col in enumerate(schema.LABEL_COLUMNS)})
    row.update(clinical.report_labels(findings, rng))
    row.update(clinical.chexpert_labels(findings, rng))
    row["cxr_exam_indication"] = clinical.indication(case, rng, multiline=multiline)
    return row


def _write_readings(
    writer: GazeTableWriter,
    screens: list[Screen],
    cases: list[Case],
    rendered: list[_Image],
    seed: int,
) -> None:
    """Gaze of every screen in reading order; TIMETICK runs on through each session."""
    session, tick, eye = 0, 0.0, None
    for screen in screens:
        if screen.session_id != session:
            session = screen.session_id
            session_rng = _rng(seed, _EYE, session)
            eye = reading.Eye.sample(session_rng)
            tick = float(np.rint(session_rng.uniform(2e11, 9e11)))
        assert eye is not None
        if screen.calibration:
            rng = _rng(seed, _CALIBRATION, screen.case_index)
            points, durations, gaps = reading.calibration_points(rng)
            native_hw = None
        else:
            rng = _rng(seed, _READING, screen.case_index)
            image = rendered[screen.case_index]
            native_hw = image.anatomy.native_hw
            centres, durations, gaps = reading.fixation_points(
                image.anatomy, image.findings, image.duration, rng
            )
            points = reading.to_screen(centres, native_hw, rng)
        cols, fixation_rows = reading.gaze_samples(points, durations, gaps, eye, rng)
        times = cols[schema.TIME_COLUMN]
        cols[schema.TIMETICK_COLUMN] = tick + np.rint(times * reading.TICKS_PER_SECOND)
        cols["X_ORIGINAL"], cols["Y_ORIGINAL"] = reading.original_coordinates(cols, native_hw)
        writer.write(session, screen.dicom_id(cases), cols, fixation_rows)
        pause = rng.uniform(*_BETWEEN_SCREENS_S)
        tick += float(np.rint((times[-1] + pause) * reading.TICKS_PER_SECOND))


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if not overwrite and any(out_dir.iterdir()):
        raise FileExistsError(
            f"{out_dir} is not empty; choose an empty or new folder, or pass overwrite=True "
            "to replace its contents"
        )


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename ``tmp`` to ``out_dir``; an existing ``out_dir`` is set aside and deleted after."""
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
    old.rmdir()
    os.replace(out_dir, old)
    try:
        os.replace(tmp, out_dir)
    except BaseException:
        os.replace(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
