"""MIMIC-CXR-like DICOM files: 12 bits stored in 16, DX for presentation, PA view.

UIDs are name-based UUIDs of the seed and the record ids under the 2.25 root (no clock, no uuid4),
dates are fixed per study and no field carries personal data, so the same seed writes the same
bytes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from model_lib.data.synth.cohort import Case

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
MAX_STORED = 4095
PIXEL_SPACING_MM = 0.139
"""MIMIC-CXR detector pitch at full size; scaled images get proportionally coarser pixels."""
_NAMESPACE = uuid.UUID("6f1c0c4e-5a53-4d0f-9a55-3f8f1a7d2b10")
"""Fixed namespace of this writer's name-based UIDs."""
_IMPLEMENTATION_NAME = "CXRGAZE_SYNTH"

Window = tuple[list[int], list[int]]
"""(centres, widths) as written; one or two values each."""


def to_stored(
    image: np.ndarray, case: Case, rng: np.random.Generator
) -> tuple[np.ndarray, Window | None]:
    """Display image (H, W) float in [0, 1] -> stored uint16 values in [0, 4095] and the window.

    The exposure range varies per image. MONOCHROME1 images store ``4095 - value``, so a reader
    must invert them; their window is stated in stored values like any other.
    """
    low = rng.uniform(0, 450)
    high = rng.uniform(3000, MAX_STORED)
    values = np.rint(low + (high - low) * image)
    np.clip(values, 0, MAX_STORED, out=values)
    stored = values.astype(np.uint16)
    if case.monochrome1:
        stored = MAX_STORED - stored
    if case.window_kind == "none":
        return stored, None
    if case.window_kind == "multi":
        return stored, ([2048, 2000], [MAX_STORED, MAX_STORED])
    sample = values[::4, ::4]
    p_lo, p_hi = np.percentile(sample, [0.5, 99.5])
    centre = (p_lo + p_hi) / 2
    if case.monochrome1:
        centre = MAX_STORED - centre
    width = (p_hi - p_lo) * rng.uniform(1.0, 1.2)
    return stored, ([round(centre)], [max(1, round(width))])


def write_dicom(
    path: Path, stored: np.ndarray, window: Window | None, case: Case, seed: int, scale: float
) -> None:
    """Write ``stored`` (H, W) uint16 as an explicit-VR little-endian DX file at ``path``."""
    rows, cols = stored.shape
    uid = _uids(seed, case)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = uid["sop"]
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_UID
    meta.ImplementationVersionName = _IMPLEMENTATION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = uid["sop"]
    ds.StudyDate = case.study_date
    ds.SeriesDate = case.study_date
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.PatientName = "___"
    ds.PatientID = str(case.patient_id)
    ds.PatientBirthDate = ""
    ds.PatientSex = case.gender
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.StudyInstanceUID = uid["study"]
    ds.SeriesInstanceUID = uid["series"]
    ds.StudyID = str(case.study_id)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if case.monochrome1 else "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    spacing = f"{PIXEL_SPACING_MM / scale:.6g}"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if window is not None:
        centres, widths = window
        ds.WindowCenter = [str(c) for c in centres] if len(centres) > 1 else str(centres[0])
        ds.WindowWidth = [str(w) for w in widths] if len(widths) > 1 else str(widths[0])
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.PresentationLUTShape = "INVERSE" if case.monochrome1 else "IDENTITY"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def _uid(*parts: object) -> str:
    """A UUID-derived UID (ISO/IEC 9834-8, root 2.25) that depends only on ``parts``."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '/'.join(map(str, parts))).int}"


_IMPLEMENTATION_UID = _uid("implementation")


def _uids(seed: int, case: Case) -> dict[str, str]:
    """Deterministic instance, series and study UIDs from the seed and the record ids."""
    return {
        "sop": _uid(seed, "sop", case.dicom_id),
        "series": _uid(seed, "series", case.dicom_id),
        "study": _uid(seed, "study", case.study_id),
    }
