"""Reader for an EGD-CXR release plus the MIMIC-CXR images it points to.

The same code reads PhysioNet's files and the synthetic data the project generates. It checks
structure only (files present, exact columns, parsable types): data-quality rules live in the
ingest step's validation suites, which get every table as read here, quirks included.

Every DataFrame is indexed by the 1-based record number in its file, so any later finding can
name the record a user should look at.

Hostile files get a DataError too, never another exception: empty, header-only, binary (NUL
bytes), non-UTF-8 or wrongly delimited tables, infinite or out-of-range numbers, and ids or paths
that would leave their folder (ids name folders and files, so ``../`` or an overlong id is refused
here rather than in validation).
"""

from __future__ import annotations

import codecs
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from model_lib.data import schema
from model_lib.data.errors import DataError, shown

_MASTER_INT = ("study_id", "patient_id", *schema.PAD_COLUMNS, "normal_reports",
               *schema.LABEL_COLUMNS, *schema.REPORT_LABEL_COLUMNS)  # fmt: skip
_MASTER_NULLABLE_INT = ("stay_id",)
_MASTER_FLOAT = schema.CHEXPERT_COLUMNS
_GAZE_TEXT = ("DICOM_ID",)
_BBOX_FLOAT = ("x1", "x2", "y1", "y2")
MAX_NAME_BYTES = 255
"""Longest file-name component (ext4, xfs, APFS): an id longer than this cannot name a file."""
MAX_PATH_CHARS = 1024
"""Longest image path accepted; a real MIMIC-CXR path has 79 characters."""
MAX_EXACT_INT = 2**53
"""Integers beyond this lose digits as float64, the type numbers are parsed through."""
_DELIMITERS = (";", "\t", "|")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class EgdTables:
    """All EGD-CXR tables of one release, as read.

    master: one row per image, columns ``schema.MASTER_SHEET_COLUMNS``.
    fixations / gaze: rows of image screens (``schema.GAZE_COLUMNS``); calibration screens (39-char
    ids) are moved to ``calibration_fixations`` / ``calibration_gaze``.
    transcripts: one row per master image: dicom_id, dir_exists, missing_files (';'-joined),
    full_text (None without transcript.json), n_phrases; all optional (validation warns).
    phrases: dicom_id, phrase, begin_time, end_time (record = phrase order).
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
    _check_names(df["dicom_id"], path, "dicom_id")
    _check_relative_paths(df["path"], path, "path")
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
        _require_records(df, path)
        _check_finite(df, numeric, path)
    if df["DICOM_ID"].isna().any():
        raise DataError(path, "empty value", row=int(df.index[df["DICOM_ID"].isna()][0]),
                        field="DICOM_ID")  # fmt: skip
    _check_names(df["DICOM_ID"], path, "DICOM_ID")
    return df


def split_calibration(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Separate image rows from calibration-screen rows (39-char truncated ids)."""
    is_calibration = table["DICOM_ID"].str.len() == schema.CALIBRATION_ID_LENGTH
    return table[~is_calibration], table[is_calibration]


def read_bounding_boxes(path: Path) -> pd.DataFrame:
    df = _read_csv_text(path, schema.BBOX_COLUMNS)
    for col in _BBOX_FLOAT:
        df[col] = _to_number(df[col], path, col, integer=False, nullable=False)
    _check_names(df["dicom_id"].dropna(), path, "dicom_id")
    return df


def read_transcripts(root: Path, dicom_ids: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Inventory of ``audio_segmentation_transcripts/<dicom_id>/`` and the parsed phrases.

    Nothing there is required (no step reads it; people skip the audio to save space): a missing
    folder, or a missing ``root``, shows as ``dir_exists`` False, which validation warns about.
    A transcript.json that is there must parse.
    """
    rows, phrases = [], []
    for dicom_id in dicom_ids:
        folder = root / dicom_id
        present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        missing = [name for name in schema.TRANSCRIPT_FILES if name not in present]
        full_text, n_phrases = None, 0
        if "transcript.json" in present:
            transcript = read_transcript(folder / "transcript.json")
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


@contextmanager
def naming_images(tables: EgdTables) -> Iterator[None]:
    """Re-raise a DataError about one image of ``tables`` (raised for its file, or for its
    master-sheet record) as the same error naming the image's dicom_id: a per-image failure
    (an unreadable DICOM, pixel data that does not decode) then names the image and the file."""
    try:
        yield
    except DataError as err:
        dicom_id = None if err.dicom_id is not None else _image_of(err, tables)
        if dicom_id is None:
            raise
        raise err.for_image(dicom_id) from err


def _image_of(err: DataError, tables: EgdTables) -> str | None:
    """The dicom_id whose image file, or master-sheet record, ``err`` names (None if none)."""
    by_file = {str(Path(p)): str(i) for i, p in tables.image_paths.items()}
    if str(Path(err.file)) in by_file:
        return by_file[str(Path(err.file))]
    master = tables.master
    if (Path(err.file) == tables.egd_root / "master_sheet.csv" and err.row in master.index
            and "dicom_id" in master.columns):  # fmt: skip
        return str(master.at[err.row, "dicom_id"])
    return None


def class_labels(master: pd.DataFrame) -> np.ndarray:
    """Class index per row (0 Normal, 1 CHF, 2 Pneumonia) from the validated one-hot columns."""
    return master[list(schema.LABEL_COLUMNS)].to_numpy().argmax(axis=1)


def read_transcript(path: Path) -> dict:
    """One transcript.json: ``full_text`` and ``time_stamped_text`` phrases with finite times."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not valid JSON: {err}") from err
    except RecursionError as err:  # json recurses once per nesting level
        raise DataError(path, "JSON nested too deeply") from err
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object")
    for key, kind in (("full_text", str), ("time_stamped_text", list)):
        if not isinstance(data.get(key), kind):
            raise DataError(path, f"missing or not a {kind.__name__}", field=key)
    for k, item in enumerate(data["time_stamped_text"], start=1):
        if not isinstance(item, dict) or not {"phrase", "begin_time", "end_time"} <= item.keys():
            raise DataError(path, "phrase without phrase/begin_time/end_time", row=k,
                            field="time_stamped_text")  # fmt: skip
        if not isinstance(item["phrase"], str):
            raise DataError(path, "phrase is not a string", row=k, field="phrase")
        for t in ("begin_time", "end_time"):
            # bool is an int to Python; JSON's NaN and Infinity literals parse to floats.
            value = item[t]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(path, f"non-numeric time {shown(value)}", row=k, field=t)
            if not math.isfinite(value):
                raise DataError(path, f"{value} is not a finite time", row=k, field=t)
    return data


def _require_file(path: Path) -> None:
    """An existing, non-empty text file: no UTF-16/32 byte-order mark, no NUL byte."""
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    with path.open("rb") as handle:
        if handle.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            raise DataError(path, "UTF-16 or UTF-32 text (byte-order mark): expected UTF-8")
        handle.seek(0)
        line = 1
        while chunk := handle.read(_CHUNK):
            nul = chunk.find(b"\0")
            if nul >= 0:
                line += chunk.count(b"\n", 0, nul)
                raise DataError(path, f"NUL byte on line {line}: a binary or corrupt file")
            line += chunk.count(b"\n")


def _require_records(df: pd.DataFrame, path: Path) -> None:
    if df.empty:
        raise DataError(path, "no records: the file holds only its header line")


def _not_utf8(path: Path) -> str:
    """Where the file stops being UTF-8 (only called after a decoder has failed)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                data = err.object
                line += chunk.count(b"\n", 0, max(0, err.start - pending))
                return f"not UTF-8 text: byte {data[err.start]:#04x} on line {line}"
            line += chunk.count(b"\n")
    return "not UTF-8 text: the file ends inside a multi-byte character"


def _read_header(path: Path) -> list[str]:
    try:
        return list(pd.read_csv(path, nrows=0, dtype=str).columns)
    except pd.errors.EmptyDataError as err:
        raise DataError(path, "no header line: the file holds only blank lines") from err
    except UnicodeDecodeError as err:
        raise DataError(path, _not_utf8(path)) from err
    except pd.errors.ParserError as err:
        raise DataError(path, f"cannot parse the header: {err}") from err


def _check_columns(path: Path, found: list[str], expected: tuple[str, ...]) -> None:
    if len(found) == 1 and len(expected) > 1:
        delimiter = next((d for d in _DELIMITERS if d in found[0]), None)
        if delimiter is not None:
            raise DataError(path, f"the header is one column split by {delimiter!r}: "
                            "expected comma-separated values")  # fmt: skip
    missing = [c for c in expected if c not in found]
    if missing:
        extra = [shown(c) for c in found if c not in expected]
        hint = f"; unexpected instead: {', '.join(extra[:5])}" if extra else ""
        raise DataError(path, f"missing column(s) {missing}{hint}", field=missing[0])
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
    except UnicodeDecodeError as err:
        raise DataError(path, _not_utf8(path)) from err
    except pd.errors.ParserError as err:
        raise DataError(path, f"malformed CSV: {str(err).strip()}") from err
    df.index = pd.RangeIndex(1, len(df) + 1)
    _require_records(df, path)
    return df


def _check_finite(df: pd.DataFrame, columns: list[str], path: Path) -> None:
    """No infinities (the CSV parser reads 'inf' and overflowing numbers such as 1e999)."""
    first: tuple[int, str] | None = None
    for col in columns:
        infinite = np.isinf(df[col].to_numpy())
        if infinite.any():
            row = int(df.index[infinite.argmax()])
            if first is None or row < first[0]:
                first = (row, col)
    if first is not None:
        row, col = first
        raise DataError(path, f"{df.at[row, col]} is not a finite number", row=row, field=col)


def _name_problem(name: str) -> str | None:
    """Why ``name`` cannot be one file-name component, or None when it can."""
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"{size:,} bytes long; at most {MAX_NAME_BYTES} (ids name files)"
    bad = next((c for c in name if c in "/\\" or ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        return f"holds {bad!r}; ids name files: no path separators or control characters"
    return None


def _check_names(ids: pd.Series, path: Path, column: str) -> None:
    """Every id can name a file: checked once per distinct id (eye_gaze.csv has 1.5M rows)."""
    for name in pd.unique(ids.to_numpy()):
        problem = _name_problem(str(name))
        if problem is not None:
            row = int(ids.index[(ids == name).to_numpy()][0])
            raise DataError(path, f"{shown(name)} {problem}", row=row, field=column)


def _check_relative_paths(paths: pd.Series, path: Path, column: str) -> None:
    """Paths stay inside the images root: relative, no '..', each part a valid file name."""
    for row, value in paths.items():
        rel = PurePosixPath(value)
        if len(value) > MAX_PATH_CHARS:
            problem = f"{len(value):,} characters long; at most {MAX_PATH_CHARS}"
        elif rel.is_absolute() or ".." in rel.parts:
            problem = "leaves the images root: expected a relative path without '..'"
        else:
            problem = next(filter(None, map(_name_problem, rel.parts)), None)
        if problem is not None:
            raise DataError(path, f"{shown(value)} {problem}", row=int(row), field=column)


def _to_number(
    values: pd.Series, path: Path, column: str, *, integer: bool, nullable: bool
) -> pd.Series:
    """Parse a text column, naming the first record that is not a number."""
    parsed = pd.to_numeric(values, errors="coerce").astype("float64")
    bad = values.notna() & parsed.isna()
    if bad.any():
        row = int(values.index[bad][0])
        raise DataError(path, f"not a number: {shown(values[row])}", row=row, field=column)
    infinite = np.isinf(parsed.to_numpy())
    if infinite.any():
        row = int(values.index[infinite][0])
        raise DataError(path, f"not a finite number: {shown(values[row])}", row=row, field=column)
    if not nullable and parsed.isna().any():
        raise DataError(path, "empty value", row=int(values.index[parsed.isna()][0]), field=column)
    if not integer:
        return parsed
    fractional = parsed.notna() & (parsed != parsed.round())
    if fractional.any():
        row = int(values.index[fractional][0])
        raise DataError(path, f"not an integer: {shown(values[row])}", row=row, field=column)
    too_large = parsed.abs() > MAX_EXACT_INT
    if too_large.any():
        row = int(values.index[too_large][0])
        raise DataError(path, f"integer out of range: {shown(values[row])}", row=row,
                        field=column)  # fmt: skip
    return parsed.astype("Int64" if nullable else "int64")
