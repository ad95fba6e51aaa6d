"""Reader for an EGD-CXR release plus the MIMIC-CXR images it points to.

The same code reads PhysioNet's files and the synthetic data the project generates. It checks
structure only (files present, exact columns, parsable types): data-quality rules live in the
ingest step's validation suites, which get every table as read here, quirks included.

Every DataFrame is indexed by the 1-based record number in its file, so any later finding can
name the record a user should look at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model_lib.data import schema
from model_lib.data.errors import DataError

_MASTER_INT = ("study_id", "patient_id", *schema.PAD_COLUMNS, "normal_reports",
               *schema.LABEL_COLUMNS, *schema.REPORT_LABEL_COLUMNS)  # fmt: skip
_MASTER_NULLABLE_INT = ("stay_id",)
_MASTER_FLOAT = schema.CHEXPERT_COLUMNS
_GAZE_TEXT = ("DICOM_ID",)
_BBOX_FLOAT = ("x1", "x2", "y1", "y2")


@dataclass(frozen=True)
class EgdTables:
    """All EGD-CXR tables of one release, as read.

    master: one row per image, columns ``schema.MASTER_SHEET_COLUMNS``.
    fixations / gaze: rows of image screens (``schema.GAZE_COLUMNS``); calibration screens (39-char
    ids) are moved to ``calibration_fixations`` / ``calibration_gaze``.
    transcripts: one row per master image: dicom_id, dir_exists, missing_files (';'-joined),
    full_text, n_phrases. phrases: dicom_id, phrase, begin_time, end_time (record = phrase order).
    image_paths: dicom_id -> image file under ``images_root`` (it may be missing: validation says).
    """

    egd_root: Path
    images_root: Path
    master: pd.DataFrame
    fixations: pd.DataFrame
    gaze: pd.DataFrame
    calibration_fixations: pd.DataFrame
    calibration_gaze: pd.DataFrame
    bboxes: pd.DataFrame
    transcripts: pd.DataFrame
    phrases: pd.DataFrame
    image_paths: pd.Series


def load_egd_cxr(egd_root: Path, images_root: Path) -> EgdTables:
    """Read every EGD-CXR table under ``egd_root`` and locate each image under ``images_root``.

    ``images_root`` is a MIMIC-CXR (DICOM, ``.dcm``) or MIMIC-CXR-JPG (``.jpg``) root; the
    master sheet's ``path`` is relative to it. Raises DataError for a missing file, a missing or
    misplaced column, or a value that does not parse.
    """
    egd_root, images_root = Path(egd_root), Path(images_root)
    if not images_root.is_dir():
        raise DataError(images_root, "images root is not a directory")
    master = read_master_sheet(egd_root / "master_sheet.csv")
    fixations, calibration_fixations = split_calibration(
        read_gaze_table(egd_root / "fixations.csv")
    )
    gaze, calibration_gaze = split_calibration(read_gaze_table(egd_root / "eye_gaze.csv"))
    transcripts, phrases = read_transcripts(
        egd_root / "audio_segmentation_transcripts", master["dicom_id"]
    )
    return EgdTables(
        egd_root=egd_root,
        images_root=images_root,
        master=master,
        fixations=fixations,
        gaze=gaze,
        calibration_fixations=calibration_fixations,
        calibration_gaze=calibration_gaze,
        bboxes=read_bounding_boxes(egd_root / "bounding_boxes.csv"),
        transcripts=transcripts,
        phrases=phrases,
        image_paths=locate_images(images_root, master),
    )


def read_master_sheet(path: Path) -> pd.DataFrame:
    """master_sheet.csv with typed columns; multi-line quoted indications stay one record."""
    df = _read_csv_text(path, schema.MASTER_SHEET_COLUMNS)
    for col in _MASTER_INT:
        df[col] = _to_number(df[col], path, col, integer=True, nullable=False)
    for col in _MASTER_NULLABLE_INT:
        df[col] = _to_number(df[col], path, col, integer=True, nullable=True)
    for col in _MASTER_FLOAT:
        df[col] = _to_number(df[col], path, col, integer=False, nullable=True)
    for col in ("dicom_id", "path", "gender", "anchor_age"):
        missing = df.index[df[col].isna()]
        if len(missing):
            raise DataError(path, "empty value", row=int(missing[0]), field=col)
    return df


def read_gaze_table(path: Path) -> pd.DataFrame:
    """fixations.csv or eye_gaze.csv (the 37 Gazepoint columns), numbers as float64.

    Parsing straight to numbers is fast on the ~400 MB real eye_gaze.csv; only when that fails is
    the file read again as text to name the offending record.
    """
    _require_file(path)
    header = _read_header(path)
    _check_columns(path, header, schema.GAZE_COLUMNS)
    numeric = [c for c in schema.GAZE_COLUMNS if c not in _GAZE_TEXT]
    try:
        df = pd.read_csv(path, dtype={"DICOM_ID": str, **dict.fromkeys(numeric, "float64")})
    except (ValueError, TypeError):
        df = _read_csv_text(path, schema.GAZE_COLUMNS)
        for col in numeric:
            df[col] = _to_number(df[col], path, col, integer=False, nullable=True)
    else:
        df.index = pd.RangeIndex(1, len(df) + 1)
    if df["DICOM_ID"].isna().any():
        raise DataError(path, "empty value", row=int(df.index[df["DICOM_ID"].isna()][0]),
                        field="DICOM_ID")  # fmt: skip
    return df


def split_calibration(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Separate image rows from calibration-screen rows (39-char truncated ids)."""
    is_calibration = table["DICOM_ID"].str.len() == schema.CALIBRATION_ID_LENGTH
    return table[~is_calibration], table[is_calibration]


def read_bounding_boxes(path: Path) -> pd.DataFrame:
    df = _read_csv_text(path, schema.BBOX_COLUMNS)
    for col in _BBOX_FLOAT:
        df[col] = _to_number(df[col], path, col, integer=False, nullable=False)
    return df


def read_transcripts(root: Path, dicom_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inventory of ``audio_segmentation_transcripts/<dicom_id>/`` and the parsed phrases."""
    if not root.is_dir():
        raise DataError(root, "transcript folder not found")
    rows, phrases = [], []
    for dicom_id in dicom_ids:
        folder = root / dicom_id
        present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        missing = [name for name in schema.TRANSCRIPT_FILES if name not in present]
        full_text, n_phrases = None, 0
        if "transcript.json" in present:
            transcript = _read_transcript(folder / "transcript.json")
            full_text = transcript["full_text"]
            for item in transcript["time_stamped_text"]:
                phrases.append({"dicom_id": dicom_id, **item})
            n_phrases = len(transcript["time_stamped_text"])
        rows.append(
            {
                "dicom_id": dicom_id,
                "dir_exists": folder.is_dir(),
                "missing_files": ";".join(missing),
                "full_text": full_text,
                "n_phrases": n_phrases,
            }
        )
    transcripts = pd.DataFrame(rows, columns=["dicom_id", "dir_exists", "missing_files",
                                              "full_text", "n_phrases"])  # fmt: skip
    phrase_table = pd.DataFrame(phrases, columns=["dicom_id", "phrase", "begin_time", "end_time"])
    for frame in (transcripts, phrase_table):
        frame.index = pd.RangeIndex(1, len(frame) + 1)
    return transcripts, phrase_table


def locate_images(images_root: Path, master: pd.DataFrame) -> pd.Series:
    """dicom_id -> image path: the DICOM named by ``path``, else the MIMIC-CXR-JPG ``.jpg``."""
    paths = []
    for rel in master["path"]:
        dicom = images_root / rel
        jpg = dicom.with_suffix(".jpg")
        paths.append(jpg if not dicom.exists() and jpg.exists() else dicom)
    return pd.Series(paths, index=master["dicom_id"].to_numpy(), name="image_path")


def class_labels(master: pd.DataFrame) -> np.ndarray:
    """Class index per row (0 Normal, 1 CHF, 2 Pneumonia) from the validated one-hot columns."""
    return master[list(schema.LABEL_COLUMNS)].to_numpy().argmax(axis=1)


def _read_transcript(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    for key, kind in (("full_text", str), ("time_stamped_text", list)):
        if not isinstance(data.get(key), kind):
            raise DataError(path, f"missing or not a {kind.__name__}", field=key)
    for k, item in enumerate(data["time_stamped_text"], start=1):
        if not isinstance(item, dict) or not {"phrase", "begin_time", "end_time"} <= item.keys():
            raise DataError(path, "phrase without phrase/begin_time/end_time", row=k,
                            field="time_stamped_text")  # fmt: skip
        if not all(isinstance(item[t], int | float) for t in ("begin_time", "end_time")):
            raise DataError(path, "non-numeric time", row=k, field="time_stamped_text")
    return data


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")


def _read_header(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot parse the header: {err}") from err


def _check_columns(path: Path, found: list[str], expected: tuple[str, ...]) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise DataError(path, f"missing column(s) {missing}", field=missing[0])
    extra = [c for c in found if c not in expected]
    if extra:
        raise DataError(path, f"unexpected column(s) {extra}", field=extra[0])
    if tuple(found) != expected:
        first = next(e for f, e in zip(found, expected, strict=True) if f != e)
        raise DataError(path, "columns are not in the released order", field=first)


def _read_csv_text(path: Path, expected: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV as text (a real CSV parser: quoted newlines are one record)."""
    _require_file(path)
    _check_columns(path, _read_header(path), expected)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(path, f"malformed CSV: {err}") from err
    df.index = pd.RangeIndex(1, len(df) + 1)
    return df


def _to_number(
    values: pd.Series, path: Path, column: str, *, integer: bool, nullable: bool
) -> pd.Series:
    """Parse a text column, naming the first record that is not a number."""
    parsed = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & parsed.isna()
    if bad.any():
        row = int(values.index[bad][0])
        raise DataError(path, f"not a number: {values[row]!r}", row=row, field=column)
    if not nullable and parsed.isna().any():
        raise DataError(path, "empty value", row=int(values.index[parsed.isna()][0]), field=column)
    if not integer:
        return parsed.astype("float64")
    fractional = parsed.notna() & (parsed != parsed.round())
    if fractional.any():
        row = int(values.index[fractional][0])
        raise DataError(path, f"not an integer: {values[row]!r}", row=row, field=column)
    return parsed.astype("Int64" if nullable else "int64")
