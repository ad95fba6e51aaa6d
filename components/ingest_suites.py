"""The expectation suites of the ingest step: one per EGD-CXR file, as Great Expectations objects.

Each suite validates one DataFrame: the table as read (indexed by 1-based record number, so every
finding names records) with derived check columns appended. Rules that GX cannot express per
group or across tables (order within an image, pads against the DICOM size, ids known to the
master sheet, ...) are computed here, vectorised, into those columns (see ``RULES``), then
validated with an ordinary expectation, so they land in the same report under a readable name.

Every expectation carries ``meta``: ``severity`` ("error" fails the step, "warning" never does),
``order`` (its place in the suite), ``rule`` (a sentence), ``show`` (source columns whose
values illustrate a failure better than a derived value does) and ``unit`` (what a row is).

Errors are what corrupts labels, images, ids or the alignment of gaze with its image. Warnings
are the quirks real eye-tracking data has: samples off screen (FPOG/BPOG outside [0, 1]) or
outside the image (negative X/Y_ORIGINAL), counted per image by the "<file> per image" suites,
fail an image only past ``data.validation`` (:class:`~model_lib.config.ValidationConfig`); the
heatmaps drop them. Files no step reads (audio, masks, transcript.json) are warnings too.

The checks follow datasets.md 1.13 (E1-E19), 1.10 and 4.5; the "DICOM identifying fields" suite
applies ``data.phi_policy`` (:mod:`model_lib.data.phi`). Not checked here: E17 (``stay_id`` is
stale; nothing joins on it), E20 (the released heatmaps are not read; the project makes its own),
E21 (patient-grouped splitting belongs to the split step).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from model_lib.config import PhiPolicy, ValidationConfig
from model_lib.data import schema
from model_lib.data.egd_cxr import EgdTables
from model_lib.data.geometry import display_pads, screen_to_native
from model_lib.data.packing import HEADER_TABLE_COLUMNS, IDENTIFYING_TABLE_COLUMNS
from model_lib.data.phi import IDENTIFYING_FIELDS

Severity = Literal["error", "warning"]

CALIBRATION_ID_REGEX = r"^[0-9a-f]{8}(?:-[0-9a-f]{8}){3}-[0-9a-f]{3}$"
OUTSIDE_MIN = -3
"""Released X/Y_ORIGINAL of points outside the image are small negatives (about -1 to -3)."""
CLOCK_TOLERANCE_S = 2e-3
MAX_FIXATION_S = 10.0

_STEPS = {
    schema.TIME_COLUMN: "time_step_in_image",
    "CNT": "cnt_step_in_image",
    "FPOGID": "fpogid_step_in_image",
    schema.TIMETICK_COLUMN: "timetick_step_in_image",
}

RULES: dict[str, str] = {
    "path_from_ids": "path is files/p<2 digits>/p<patient_id>/s<study_id>/<dicom_id>.dcm",
    "image_pads_from_dicom_size": "pads == geometry.display_pads(DICOM Rows, Columns)",
    "pad_left_minus_right": "image_left_pad - image_right_pad is 0 or -1",
    "pad_top_minus_bottom": "image_top_pad - image_bottom_pad is 0 or -1",
    "shown_long_side": "the image fills the 1024-pixel side of the 1920x1024 display canvas",
    "class_one_hot_sum": "Normal + CHF + pneumonia == 1",
    "dicom_header_rows": "exactly one DICOM header per image",
    "fixation_rows": "every image has a row in fixations.csv",
    "eye_gaze_rows_inside_image": "every image has an eye_gaze.csv sample inside the image",
    **{step: f"{col} is non-decreasing within an image" for col, step in _STEPS.items()},
    "timetick_step_in_session": f"{schema.TIMETICK_COLUMN} increases across a session",
    "clock_drift_in_image": "dTIMETICK/1e7 == dTime within 2 ms between rows of an image",
    "time_minus_fixation_end": f"{schema.TIME_COLUMN} == FPOGS + FPOGD within 2 ms",
    "image_width_even": "X_ORIGINAL < the DICOM width rounded up to even",
    "image_height_even": "Y_ORIGINAL < the DICOM height rounded up to even",
    "x_y_negative_together": "X_ORIGINAL and Y_ORIGINAL are negative together (outside points)",
    "x_original_from_fpog": "X_ORIGINAL == the released mapping of FPOGX through the pads",
    "y_original_from_fpog": "Y_ORIGINAL == the released mapping of FPOGY through the pads",
    "time_step_in_screen": f"{schema.TIME_COLUMN} is non-decreasing within a calibration screen",
    "image_width": "x2 <= the DICOM width",
    "image_height": "y2 <= the DICOM height",
    "boxes_per_image": f"at most {len(schema.BBOX_NAMES)} boxes per image",
    "begin_step_in_transcript": "phrases are sorted by begin_time within a transcript",
    "window_width_first": "the first WindowWidth value is positive",
}
"""Derived check column -> the rule it checks (shown in the report)."""

SHOW: dict[str, tuple[str, ...]] = {
    "pad_left_minus_right": ("image_left_pad", "image_right_pad"),
    "pad_top_minus_bottom": ("image_top_pad", "image_bottom_pad"),
    "image_pads_from_dicom_size": ("dicom_id", "image_pads", "image_pads_from_dicom_size"),
    "dicom_header_rows": ("dicom_id", "dicom_header_rows"),
    "window_width_first": ("dicom_id", "WindowWidth"),
    "class_one_hot_sum": schema.LABEL_COLUMNS,
    "x_y_negative_together": ("X_ORIGINAL", "Y_ORIGINAL"),
    "x_original_from_fpog": ("DICOM_ID", "FPOGX", "FPOGY", "X_ORIGINAL"),
    "y_original_from_fpog": ("DICOM_ID", "FPOGX", "FPOGY", "Y_ORIGINAL"),
    "boxes_per_image": ("dicom_id",),
    "begin_step_in_transcript": ("dicom_id", "phrase", "begin_time"),
}
"""Derived check column -> source columns whose values the report shows for failing rows."""


@dataclass
class SuiteSpec:
    """One file's suite: the frame GX validates and its expectations, in report order."""

    name: str
    frame: pd.DataFrame
    expectations: list[Any] = field(default_factory=list)

    unit: str = "rows"

    def add(
        self,
        expectation: Callable[..., Any],
        *,
        severity: Severity = "error",
        rule: str = "",
        show: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        """Append ``expectation(**kwargs)``; a derived column brings its rule and shown columns.

        Column pairs skip rows where either side is missing: missing values have their own
        not-null checks, and one finding per fault reads better.
        """
        if "column_A" in kwargs:
            kwargs.setdefault("ignore_row_if", "either_value_is_missing")
        names = [kwargs.get(k) for k in ("column", "column_B", "column_A")]
        derived = next((n for n in names if n in RULES), None)
        meta = {
            "severity": severity,
            "order": len(self.expectations),
            "rule": rule or RULES.get(derived, ""),
            "show": list(show or SHOW.get(derived, ())),
            "unit": self.unit,
        }
        self.expectations.append(expectation(**kwargs, meta=meta))


def build_suites(
    tables: EgdTables,
    headers: pd.DataFrame,
    *,
    expected_images: int | None,
    limits: ValidationConfig | None = None,
    identifying: pd.DataFrame | None = None,
    phi_policy: PhiPolicy = "fail",
) -> list[SuiteSpec]:
    """Every suite of one EGD-CXR release, in report order; the identifying-fields suite only
    when ``identifying`` (as ``packing.read_image_headers`` returns it) is given. ``limits``:
    the per-image fractions of off-screen / off-image samples past which an image fails (None:
    the defaults)."""
    limits = ValidationConfig() if limits is None else limits
    sizes = _image_sizes(headers)
    ids = list(_column(tables.master, "dicom_id").dropna().unique())
    gaze = {"pads": _pads_by_id(tables.master), "sizes": sizes, "master_ids": ids}
    master_ids = _column(tables.master, "dicom_id")
    return [
        master_suite(tables, headers, sizes, expected_images),
        gaze_suite("fixations.csv", tables.fixations, fixations=True, **gaze),
        gaze_suite("eye_gaze.csv", tables.gaze, fixations=False, **gaze),
        per_image_suite("fixations.csv", tables.fixations, master_ids, limits),
        per_image_suite("eye_gaze.csv", tables.gaze, master_ids, limits),
        calibration_suite("fixations.csv (calibration screens)", tables.calibration_fixations, ids),
        calibration_suite("eye_gaze.csv (calibration screens)", tables.calibration_gaze, ids),
        bbox_suite(tables.bboxes, sizes, ids),
        transcript_suite(tables.transcripts, ids),
        phrase_suite(tables.phrases, ids),
        header_suite(headers, ids),
        *([] if identifying is None else [identifying_suite(identifying, phi_policy)]),
    ]


def master_suite(
    tables: EgdTables, headers: pd.DataFrame, sizes: pd.DataFrame, expected_images: int | None
) -> SuiteSpec:
    """master_sheet.csv: E1, E3, E10-E16."""
    import great_expectations.expectations as gxe

    master, name = tables.master, "master_sheet.csv"
    if not _has_columns(master, schema.MASTER_SHEET_COLUMNS):
        return _columns_only(name, master, schema.MASTER_SHEET_COLUMNS)
    top, bottom, left, right = (master[c] for c in schema.PAD_COLUMNS)
    canvas_w, canvas_h = schema.DISPLAY_CANVAS_WH
    ids, id_regex = master["dicom_id"], _regex(schema.DICOM_ID_RE)
    spec = SuiteSpec(name, master.assign(
        path_from_ids=_expected_paths(master),
        image_pads=_pads_text(master[list(schema.PAD_COLUMNS)]),
        image_pads_from_dicom_size=_pads_from_size(ids, sizes),
        pad_left_minus_right=left - right,
        pad_top_minus_bottom=top - bottom,
        shown_long_side=np.maximum(canvas_w - left - right, canvas_h - top - bottom),
        class_one_hot_sum=master[list(schema.LABEL_COLUMNS)].sum(axis=1),
        dicom_header_rows=_count_by_id(ids, _column(headers, "dicom_id")),
        fixation_rows=_count_by_id(ids, _column(tables.fixations, "DICOM_ID")),
        eye_gaze_rows_inside_image=_count_by_id(ids, _ids_inside_image(tables.gaze)),
    ))  # fmt: skip
    _add_columns_check(spec, schema.MASTER_SHEET_COLUMNS)
    if expected_images is None:
        spec.add(gxe.ExpectTableRowCountToBeBetween, min_value=1)
    else:
        spec.add(gxe.ExpectTableRowCountToEqual, value=expected_images,
                 rule="records, not lines: quoted indications span several lines")  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToNotBeNull, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToMatchRegex, column="dicom_id", regex=id_regex)
    spec.add(gxe.ExpectColumnValuesToBeUnique, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToMatchRegex, column="path", regex=_regex(schema.MASTER_PATH_RE))
    spec.add(gxe.ExpectColumnPairValuesToBeEqual, column_A="path", column_B="path_from_ids")
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="patient_id", min_value=10**7,
             max_value=2 * 10**7 - 1)  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="study_id", min_value=5 * 10**7,
             max_value=6 * 10**7 - 1)  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="gender", value_set=["F", "M"])
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="anchor_age", value_set=list(schema.AGE_BINS))
    for col in schema.PAD_COLUMNS:
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=col, min_value=0)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="pad_left_minus_right", value_set=[0, -1])
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="pad_top_minus_bottom", value_set=[0, -1])
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="shown_long_side", value_set=[1023, 1024])
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dicom_header_rows", value_set=[1])
    spec.add(gxe.ExpectColumnPairValuesToBeEqual, column_A="image_pads",
             column_B="image_pads_from_dicom_size")  # fmt: skip
    for col in schema.DX_COLUMNS[1::2]:
        spec.add(gxe.ExpectColumnValuesToMatchRegex, column=col, regex=_regex(schema.ICD_RE))
    for col in ("normal_reports", *schema.LABEL_COLUMNS, *schema.REPORT_LABEL_COLUMNS):
        spec.add(gxe.ExpectColumnValuesToBeInSet, column=col, value_set=[0, 1])
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="class_one_hot_sum", value_set=[1])
    for col in schema.CHEXPERT_COLUMNS:
        spec.add(gxe.ExpectColumnValuesToBeInSet, column=col, value_set=[-1.0, 0.0, 1.0])
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="fixation_rows", min_value=1)
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="eye_gaze_rows_inside_image", min_value=1)
    return spec


def gaze_suite(
    name: str,
    table: pd.DataFrame,
    *,
    fixations: bool,
    pads: pd.DataFrame,
    sizes: pd.DataFrame,
    master_ids: list[str],
) -> SuiteSpec:
    """fixations.csv / eye_gaze.csv image rows: E2, E4, E6-E10 (E4/E5 fractions: per image).

    FPOGD must be > 0 for fixations but only >= 0 for raw samples, whose first sample of a
    fixation may carry a zero duration.
    """
    import great_expectations.expectations as gxe

    if not _has_columns(table, schema.GAZE_COLUMNS):
        return _columns_only(name, table, schema.GAZE_COLUMNS)
    x, y, id_regex = table["X_ORIGINAL"], table["Y_ORIGINAL"], _regex(schema.DICOM_ID_RE)
    steps = _steps(table[list(_STEPS)], _screen_codes(table), first=0.0)
    ticks = _steps(table[schema.TIMETICK_COLUMN], table["SESSION_ID"], first=np.inf)
    height = table["DICOM_ID"].map(sizes["Rows"])
    width = table["DICOM_ID"].map(sizes["Columns"])
    derived = {step: steps[col] for col, step in _STEPS.items()} | {
        "timetick_step_in_session": ticks,
        "clock_drift_in_image": steps[schema.TIMETICK_COLUMN] / 1e7 - steps[schema.TIME_COLUMN],
        "image_width_even": width + width % 2,
        "image_height_even": height + height % 2,
        "x_y_negative_together": (x < 0) == (y < 0),
        **_mapped_gaze(table, pads, sizes),
    }
    if fixations:
        fixation_end = table["FPOGS"] + table["FPOGD"]
        derived["time_minus_fixation_end"] = table[schema.TIME_COLUMN] - fixation_end
    spec = SuiteSpec(name, table.assign(**derived))
    _add_columns_check(spec, schema.GAZE_COLUMNS)
    spec.add(gxe.ExpectTableRowCountToBeBetween, min_value=1)
    for col in ("SESSION_ID", "DICOM_ID", schema.TIME_COLUMN, schema.TIMETICK_COLUMN, "FPOGX",
                "FPOGY", "X_ORIGINAL", "Y_ORIGINAL"):  # fmt: skip
        spec.add(gxe.ExpectColumnValuesToNotBeNull, column=col)
    spec.add(gxe.ExpectColumnValuesToMatchRegex, column="DICOM_ID", regex=id_regex)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="DICOM_ID", value_set=master_ids,
             rule="a 44-character DICOM_ID is a master_sheet.csv dicom_id")  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeBetween, column=schema.TIME_COLUMN, min_value=0.0,
             rule="time since the session started is never negative")  # fmt: skip
    for col in schema.VALIDITY_COLUMNS:
        spec.add(gxe.ExpectColumnValuesToBeInSet, column=col, value_set=[0, 1])
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="FPOGD", min_value=0.0, strict_min=fixations)
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="FPOGD", max_value=MAX_FIXATION_S,
             strict_max=True, severity="warning")  # fmt: skip
    for step in _STEPS.values():
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=step, min_value=0)
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="timetick_step_in_session", min_value=0,
             strict_min=True)  # fmt: skip
    clock_checks = ["clock_drift_in_image"] + ["time_minus_fixation_end"] * fixations
    for col in clock_checks:
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=col, min_value=-CLOCK_TOLERANCE_S,
                 max_value=CLOCK_TOLERANCE_S)  # fmt: skip
    for col, bound in (("X_ORIGINAL", "image_width_even"), ("Y_ORIGINAL", "image_height_even")):
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=col, min_value=OUTSIDE_MIN)
        spec.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A=bound, column_B=col)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="x_y_negative_together", value_set=[True])
    for col in ("X_ORIGINAL", "Y_ORIGINAL"):
        spec.add(gxe.ExpectColumnPairValuesToBeEqual, column_A=col,
                 column_B=f"{col[0].lower()}_original_from_fpog", severity="warning")  # fmt: skip
    return spec


OFFSCREEN_COLUMNS: tuple[str, ...] = ("FPOGX", "FPOGY", "BPOGX", "BPOGY")
"""A sample is off screen when any of these lies outside [0, 1] (the reader looked away)."""
_SAMPLE_KINDS: dict[str, tuple[str, str]] = {
    "offscreen": ("off screen (FPOG or BPOG outside [0, 1])", "max_offscreen_fraction"),
    "outside_image": ("outside the image (negative X/Y_ORIGINAL)", "max_outside_image_fraction"),
}
"""Kind of dropped sample -> (what it is, the data.validation limit of its per-image fraction)."""


def per_image_samples(table: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Per image of ``ids`` (indexed like it): its rows in ``table`` and how many of them are off
    screen or outside the image, with their fractions (0 for an image without rows, which the
    master-sheet checks report). Non-finite values count as neither: not-null checks name them.

    Outside the image: negative X/Y_ORIGINAL, or (0, 0), which the released mapping of an
    outside point truncates to on images under about a third of real size (the heatmaps drop
    both)."""
    counts: dict[str, pd.Series] = {}
    if _has_columns(table, ("DICOM_ID", *OFFSCREEN_COLUMNS, "X_ORIGINAL", "Y_ORIGINAL")):
        pog, x, y = table[list(OFFSCREEN_COLUMNS)], table["X_ORIGINAL"], table["Y_ORIGINAL"]
        flags = {
            "offscreen": ((pog < 0) | (pog > 1)).any(axis=1),
            "outside_image": (x < 0) | (y < 0) | ((x == 0) & (y == 0)),
        }
        grouped = pd.DataFrame(flags).groupby(table["DICOM_ID"].to_numpy(), sort=False)
        counts = {"rows": grouped.size(), **grouped.sum()}
    frame = pd.DataFrame({"dicom_id": ids})
    rows = ids.map(counts.get("rows", {})).fillna(0).astype("int64")
    frame["rows"] = rows
    for kind in _SAMPLE_KINDS:
        found = ids.map(counts.get(kind, {})).fillna(0).astype("int64")
        frame[kind] = found
        # Rounded: the report shows them; 5e-5 either side of a limit does not matter.
        frame[f"{kind}_fraction"] = (found / rows.where(rows > 0)).fillna(0.0).round(4)
    return frame


def per_image_suite(
    file: str, table: pd.DataFrame, ids: pd.Series, limits: ValidationConfig
) -> SuiteSpec:
    """Off-screen and off-image samples of each image (E4, E5): a warning with the counts when
    any image has some, an error naming the images past the ``data.validation`` limit.

    One row per master-sheet record (the records named are master_sheet.csv's).
    """
    import great_expectations.expectations as gxe

    frame = per_image_samples(table, ids)
    spec = SuiteSpec(f"{file} per image", frame, unit="images")
    total = int(frame["rows"].sum())
    for kind, (what, limit_name) in _SAMPLE_KINDS.items():
        column, found = f"{kind}_fraction", int(frame[kind].sum())
        limit = getattr(limits, limit_name)
        share = f" ({found / total:.1%})" if total else ""
        show = ["dicom_id", kind, "rows", column]
        setting = f"data.validation.{limit_name} = {limit:g}"
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=column, max_value=0.0,
                 severity="warning", show=show,
                 rule=f"{found:,} of {total:,} samples{share} are {what}: dropped from the "
                 f"heatmaps; an image fails above {setting}")  # fmt: skip
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=column, max_value=limit, show=show,
                 rule=f"at most {setting} (params.yaml) of an image's samples are "
                 f"{what}")  # fmt: skip
    return spec


def calibration_suite(name: str, table: pd.DataFrame, master_ids: list[str]) -> SuiteSpec:
    """Calibration-screen rows (39-character ids): light checks (E2, E6, E7, E10)."""
    import great_expectations.expectations as gxe

    if not _has_columns(table, schema.GAZE_COLUMNS):
        return _columns_only(name, table, schema.GAZE_COLUMNS)
    step = _steps(table[schema.TIME_COLUMN], _screen_codes(table), first=0.0)
    spec = SuiteSpec(name, table.assign(time_step_in_screen=step))
    _add_columns_check(spec, schema.GAZE_COLUMNS)
    prefixes = sorted({i[: schema.CALIBRATION_ID_LENGTH] for i in master_ids})
    spec.add(gxe.ExpectColumnValuesToMatchRegex, column="DICOM_ID", regex=CALIBRATION_ID_REGEX)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="DICOM_ID", value_set=prefixes,
             rule="a 39-character DICOM_ID starts a master_sheet.csv dicom_id")  # fmt: skip
    for col in ("FPOGX", "FPOGY"):
        spec.add(gxe.ExpectColumnValuesToNotBeNull, column=col)
    for col in schema.VALIDITY_COLUMNS:
        spec.add(gxe.ExpectColumnValuesToBeInSet, column=col, value_set=[0, 1])
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="time_step_in_screen", min_value=0)
    return spec


def bbox_suite(bboxes: pd.DataFrame, sizes: pd.DataFrame, master_ids: list[str]) -> SuiteSpec:
    """bounding_boxes.csv: E10, E12, E18."""
    import great_expectations.expectations as gxe

    name = "bounding_boxes.csv"
    if not _has_columns(bboxes, schema.BBOX_COLUMNS):
        return _columns_only(name, bboxes, schema.BBOX_COLUMNS)
    ids = bboxes["dicom_id"]
    spec = SuiteSpec(name, bboxes.assign(
        image_width=ids.map(sizes["Columns"]),
        image_height=ids.map(sizes["Rows"]),
        boxes_per_image=ids.map(ids.value_counts()),
    ))  # fmt: skip
    _add_columns_check(spec, schema.BBOX_COLUMNS)
    spec.add(gxe.ExpectColumnValuesToNotBeNull, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dicom_id", value_set=master_ids)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="bbox_name", value_set=list(schema.BBOX_NAMES))
    spec.add(gxe.ExpectCompoundColumnsToBeUnique, column_list=["dicom_id", "bbox_name"])
    for low, high, bound in (("x1", "x2", "image_width"), ("y1", "y2", "image_height")):
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=low, min_value=0)
        spec.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A=high, column_B=low)
        spec.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A=bound, column_B=high,
                 or_equal=True)  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="boxes_per_image",
             max_value=len(schema.BBOX_NAMES))  # fmt: skip
    return spec


UNREAD = "no step reads it: a warning"


def transcript_suite(transcripts: pd.DataFrame, master_ids: list[str]) -> SuiteSpec:
    """audio_segmentation_transcripts/<dicom_id>/: the folder and its files, text non-empty (E3,
    E19). No step of the pipeline reads them (audio and masks are often skipped to save space),
    so their absence or content is a warning."""
    import great_expectations.expectations as gxe

    spec = SuiteSpec("audio_segmentation_transcripts", transcripts)
    spec.add(gxe.ExpectColumnValuesToBeUnique, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dicom_id", value_set=master_ids)
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dir_exists", value_set=[True],
             severity="warning", show=["dicom_id"],
             rule=f"every image has a transcript folder ({UNREAD})")  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="missing_files", value_set=[""],
             severity="warning", show=["dicom_id", "missing_files"],
             rule=f"every folder holds {', '.join(schema.TRANSCRIPT_FILES)} "
             f"({UNREAD})")  # fmt: skip
    # A present transcript.json always has a full_text string (the reader checks); absent: null.
    spec.add(gxe.ExpectColumnValuesToMatchRegex, column="full_text", regex=r"\S",
             severity="warning", show=["dicom_id", "full_text"],
             rule=f"a transcript's full_text is not blank ({UNREAD})")  # fmt: skip
    return spec


def phrase_suite(phrases: pd.DataFrame, master_ids: list[str]) -> SuiteSpec:
    """transcript.json ``time_stamped_text`` entries, in transcript order (E19): warnings, as
    no step reads them."""
    import great_expectations.expectations as gxe

    step = _steps(phrases["begin_time"], phrases["dicom_id"], first=0.0)
    spec = SuiteSpec("transcript.json phrases", phrases.assign(begin_step_in_transcript=step))
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dicom_id", value_set=master_ids)
    warn = {"severity": "warning"}
    spec.add(gxe.ExpectColumnValuesToNotBeNull, column="phrase", **warn)
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="begin_time", min_value=0, **warn)
    spec.add(gxe.ExpectColumnPairValuesAToBeGreaterThanB, column_A="end_time",
             column_B="begin_time", or_equal=True, show=["dicom_id", "phrase"], **warn)  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="begin_step_in_transcript", min_value=0,
             **warn)  # fmt: skip
    return spec


def header_suite(headers: pd.DataFrame, master_ids: list[str]) -> SuiteSpec:
    """The DICOM header fields (datasets.md 4.4-4.5); JPG images fill only the size fields."""
    import great_expectations.expectations as gxe

    name = "DICOM headers"
    if not _has_columns(headers, HEADER_TABLE_COLUMNS):
        return _columns_only(name, headers, HEADER_TABLE_COLUMNS, ordered=False)
    window = headers["WindowWidth"].map(_first_number).astype("float64")
    spec = SuiteSpec(name, headers.assign(window_width_first=window))
    spec.add(gxe.ExpectTableColumnsToMatchSet, exact_match=True,
             column_set=[*HEADER_TABLE_COLUMNS, "window_width_first"])  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToNotBeNull, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToBeUnique, column="dicom_id")
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="dicom_id", value_set=master_ids)
    for col in ("Rows", "Columns"):
        spec.add(gxe.ExpectColumnValuesToNotBeNull, column=col, show=["dicom_id", col])
        spec.add(gxe.ExpectColumnValuesToBeBetween, column=col, min_value=1, show=["dicom_id", col])
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="BitsStored", min_value=1, max_value=16,
             show=["dicom_id", "BitsStored"])  # fmt: skip
    photometric = "PhotometricInterpretation"
    spec.add(gxe.ExpectColumnValuesToBeInSet, column=photometric,
             value_set=["MONOCHROME1", "MONOCHROME2"], show=["dicom_id", photometric])  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeInSet, column=photometric, value_set=["MONOCHROME2"],
             severity="warning", show=["dicom_id", photometric],
             rule="MONOCHROME1 images, counted: inverted when decoded with "
                  "data.geometry.intensity=window, kept as stored with 'raw'")  # fmt: skip
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="ViewPosition", value_set=["PA", "AP"])
    spec.add(gxe.ExpectColumnValuesToBeBetween, column="window_width_first", min_value=0,
             strict_min=True)  # fmt: skip
    return spec


PHI_SUITE = "DICOM identifying fields"
PHI_RULES: dict[PhiPolicy, str] = {
    "fail": "no identifying DICOM field is filled (data.phi_policy=fail; 'strip' would ingest "
    "the release keeping only the whitelisted fields)",
    "strip": "identifying DICOM fields are stripped: only the whitelisted header fields leave "
    "ingest (data.phi_policy=strip)",
}


def identifying_suite(identifying: pd.DataFrame, policy: PhiPolicy) -> SuiteSpec:
    """Identifying DICOM fields (names only): one check over every file, and one per field that
    some file fills, so the report counts files per field. Severity: "error" under policy "fail",
    "warning" under "strip"."""
    import great_expectations.expectations as gxe

    name = PHI_SUITE
    if not _has_columns(identifying, IDENTIFYING_TABLE_COLUMNS):
        return _columns_only(name, identifying, IDENTIFYING_TABLE_COLUMNS)
    per_file = identifying["identifying_fields"].fillna("").str.split(", ")
    flags = {f: per_file.map(lambda names, f=f: f in names) for f in IDENTIFYING_FIELDS}
    found = {f: filled for f, filled in flags.items() if filled.any()}
    spec = SuiteSpec(name, identifying.assign(**found))
    severity: Severity = "error" if policy == "fail" else "warning"
    rule = PHI_RULES[policy]
    spec.add(gxe.ExpectColumnValuesToBeInSet, column="identifying_fields", value_set=[""],
             severity=severity, rule=rule, show=["file", "identifying_fields"])  # fmt: skip
    for field_name in found:
        spec.add(gxe.ExpectColumnValuesToBeInSet, column=field_name, value_set=[False],
                 severity=severity, rule=rule, show=["file"])  # fmt: skip
    return spec


def _has_columns(table: pd.DataFrame, columns: Sequence[str]) -> bool:
    return all(c in table.columns for c in columns)


def _columns_only(
    name: str, table: pd.DataFrame, columns: Sequence[str], *, ordered: bool = True
) -> SuiteSpec:
    """A table without its released columns gets only the column check: the rest would not run."""
    import great_expectations.expectations as gxe

    spec = SuiteSpec(name, table)
    if ordered:
        spec.add(gxe.ExpectTableColumnsToMatchOrderedList, column_list=list(columns))
    else:
        spec.add(gxe.ExpectTableColumnsToMatchSet, column_set=list(columns), exact_match=True)
    return spec


def _add_columns_check(spec: SuiteSpec, released: Sequence[str]) -> None:
    """E10: the released columns in file order, followed by this suite's derived columns."""
    import great_expectations.expectations as gxe

    derived = [c for c in spec.frame.columns if c not in released]
    spec.add(gxe.ExpectTableColumnsToMatchOrderedList, column_list=[*released, *derived],
             rule="the released columns in file order, then the derived check columns")  # fmt: skip


def _regex(pattern: re.Pattern[str]) -> str:
    """The schema pattern with non-capturing groups: GX matches with ``str.contains``, which
    warns about capturing groups on every call."""
    return re.sub(r"(?<!\\)\((?!\?)", "(?:", pattern.pattern)


def _screen_codes(table: pd.DataFrame) -> pd.Series:
    """One code per (SESSION_ID, DICOM_ID): the rows of one screen shown in one session."""
    return table.groupby(["SESSION_ID", "DICOM_ID"], sort=False, dropna=False).ngroup()


def _steps(values: pd.DataFrame | pd.Series, groups: pd.Series, *, first: float) -> Any:
    """Difference to the previous row of the same group, in file order.

    A group's first row has no step and gets ``first``, a value its check accepts. A derived
    column without nulls matters: GX drops null rows by copying the whole frame, once per metric,
    which takes seconds on the 1.5M-row eye_gaze.csv.
    """
    steps = values.groupby(groups, sort=False, dropna=False).diff()
    steps.loc[~groups.duplicated().to_numpy()] = first
    return steps


def _image_sizes(headers: pd.DataFrame) -> pd.DataFrame:
    """dicom_id -> Rows, Columns (float, NaN when unreadable); an id's first header row wins."""
    if not _has_columns(headers, ("dicom_id", "Rows", "Columns")):
        return pd.DataFrame({"Rows": [], "Columns": []}, dtype="float64")
    first = headers.dropna(subset=["dicom_id"]).drop_duplicates("dicom_id").set_index("dicom_id")
    return first[["Rows", "Columns"]].apply(pd.to_numeric, errors="coerce").astype("float64")


def _count_by_id(ids: pd.Series, rows: pd.Series) -> pd.Series:
    """How many of ``rows`` carry each id of ``ids`` (0 when none)."""
    return ids.map(rows.value_counts()).fillna(0).astype("int64")


def _expected_paths(master: pd.DataFrame) -> pd.Series:
    """The MIMIC-CXR path each row's patient_id, study_id and dicom_id imply (None if unknown)."""
    keys = ["patient_id", "study_id", "dicom_id"]
    known = master[keys].notna().all(axis=1)
    paths = pd.Series(None, index=master.index, dtype=object)
    rows = master.loc[known, keys].itertuples(index=False)
    paths[known] = [schema.mimic_image_path(int(p), int(s), str(d)) for p, s, d in rows]
    return paths


def _pads_text(pads: pd.DataFrame) -> pd.Series:
    """'top,bottom,left,right' per row, comparable with :func:`_pads_from_size`."""
    return pads.astype("Int64").astype(str).agg(",".join, axis=1)


def _pads_from_size(ids: pd.Series, sizes: pd.DataFrame) -> pd.Series:
    """geometry.display_pads of each image's DICOM (Rows, Columns), as 'top,bottom,left,right'."""
    known = sizes.dropna()
    known = known[(known["Rows"] > 0) & (known["Columns"] > 0)]
    by_id = {
        dicom_id: ",".join(str(p) for p in display_pads((int(h), int(w))))
        for dicom_id, h, w in zip(known.index, known["Rows"], known["Columns"], strict=True)
    }
    return ids.map(by_id)


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """``table[name]``, or no values when a malformed table lacks it (its own suite says so)."""
    return table[name] if name in table.columns else pd.Series(dtype=object)


def _ids_inside_image(gaze: pd.DataFrame) -> pd.Series:
    """DICOM_ID of the gaze rows inside their image (both X/Y_ORIGINAL >= 0)."""
    if not _has_columns(gaze, ("DICOM_ID", "X_ORIGINAL", "Y_ORIGINAL")):
        return pd.Series(dtype=object)
    return gaze.loc[(gaze["X_ORIGINAL"] >= 0) & (gaze["Y_ORIGINAL"] >= 0), "DICOM_ID"]


def _pads_by_id(master: pd.DataFrame) -> pd.DataFrame:
    """dicom_id -> the four pads of master_sheet.csv (empty when the sheet lacks them)."""
    columns = list(schema.PAD_COLUMNS)
    if not _has_columns(master, ["dicom_id", *columns]):
        return pd.DataFrame(columns=columns, dtype="float64")
    return master.drop_duplicates("dicom_id").set_index("dicom_id")[columns]


def _mapped_gaze(
    table: pd.DataFrame, pads: pd.DataFrame, sizes: pd.DataFrame
) -> dict[str, pd.Series]:
    """X/Y_ORIGINAL recomputed from FPOGX/FPOGY with the released mapping (NaN when unknown)."""
    per_row = pd.concat([pads, sizes], axis=1).reindex(table["DICOM_ID"]).to_numpy(np.float64)
    fpog = table[["FPOGX", "FPOGY"]].to_numpy(np.float64)
    known = np.isfinite(per_row).all(axis=1) & np.isfinite(fpog).all(axis=1)
    known &= (per_row[:, 4] > 0) & (per_row[:, 5] > 0)
    rows = per_row[known].astype(np.int64)
    pads_per_row = (rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3])
    x, y = screen_to_native(fpog[known, 0], fpog[known, 1], pads_per_row, (rows[:, 4], rows[:, 5]))
    out = {}
    for name, values in (("x_original_from_fpog", x), ("y_original_from_fpog", y)):
        column = np.full(len(table), np.nan)
        column[known] = values
        out[name] = pd.Series(column, index=table.index)
    return out


def _first_number(value: Any) -> float:
    """The first value of a possibly multi-valued DICOM field ('40\\400', [40, 400], 40.0)."""
    if isinstance(value, str):
        value = value.split("\\")[0]
    elif isinstance(value, Sequence | np.ndarray):
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")
