"""The ingest step's GX suites: a small hand-built release passes, and every fault is named.

GX spends about 20 ms per expectation whatever the data size, so the module validates a handful
of releases only: the valid one, one copy carrying every fault (each in its own records), one with
warnings only, and a large one for speed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.ingest_checks import ValidationFailed, ValidationReport, validate_egd
from components.ingest_suites import _first_number, _regex, per_image_samples
from model_lib.config import ValidationConfig
from model_lib.data import schema
from model_lib.data.egd_cxr import (
    EgdTables,
    read_bounding_boxes,
    read_gaze_table,
    read_master_sheet,
    split_calibration,
)
from model_lib.data.geometry import display_pads, screen_to_native

# (Rows, Columns): portrait, landscape, odd sizes (even rounding, 1-pixel pad asymmetry).
SIZES = [(3056, 2544), (2544, 3056), (3050, 2539), (2022, 1736)]
LABELS = ["Normal", "CHF", "pneumonia", "CHF"]
FIXATIONS_PER_IMAGE, GAZE_PER_IMAGE = 6, 20


@pytest.fixture(scope="module", autouse=True)
def _no_gx_analytics():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GX_ANALYTICS_ENABLED", "false")
        yield


def dicom_id(k: int) -> str:
    return "-".join(f"{(k * 2654435761 + j * 40503) % 16**8:08x}" for j in range(5))


def master_row(k: int) -> dict:
    """Record k+1 of master_sheet.csv (59 columns), consistent with SIZES[k]."""
    patient, study = 10_000_100 + k, 50_000_200 + k
    row = dict.fromkeys(schema.MASTER_SHEET_COLUMNS)
    row |= {"dicom_id": dicom_id(k), "path": schema.mimic_image_path(patient, study, dicom_id(k)),
            "study_id": study, "patient_id": patient, "stay_id": 30_000_000 + k,
            "gender": "FM"[k % 2], "anchor_age": schema.AGE_BINS[k], "dx1": "HEART FAILURE",
            "dx1_icd": ["428", "I50.9", "79.99", "S06.0X0A"][k], "normal_reports": int(k == 0),
            "cxr_exam_indication": "___F with SOB\n// ?pna"}  # fmt: skip
    row |= dict(zip(schema.PAD_COLUMNS, display_pads(SIZES[k]), strict=True))
    row |= {c: int(c == LABELS[k]) for c in schema.LABEL_COLUMNS}
    row |= dict.fromkeys(schema.REPORT_LABEL_COLUMNS, 0)
    row |= {c: [1.0, 0.0, -1.0, np.nan][(i + k) % 4] for i, c in enumerate(schema.CHEXPERT_COLUMNS)}
    return row


def gaze_rows(k: int, n: int, *, calibration: bool = False) -> pd.DataFrame:
    """n Gazepoint rows on image k (or the calibration screen after it), clocks and X/Y consistent.

    The first row looks at the left screen edge: outside every image, so X/Y_ORIGINAL < 0.
    """
    rng = np.random.default_rng(k)
    t = 0.1 + np.arange(n) * 0.25
    fpog_x, fpog_y = rng.uniform(0.3, 0.7, n), rng.uniform(0.2, 0.8, n)
    fpog_x[0], fpog_y[0] = 0.01, 0.5
    pads, size = ((0, 0, 0, 0), (1080, 1920)) if calibration else (display_pads(SIZES[k]), SIZES[k])
    x, y = screen_to_native(fpog_x, fpog_y, pads, size)
    ticks = (1_000 + 100_000 * k + 50_000 * calibration + t) * 1e7
    values = {"SESSION_ID": 1.0, "MEDIA_ID": 0.0, "CNT": 100.0 * k + 15 * np.arange(n),
              "DICOM_ID": dicom_id(k)[: 39 if calibration else 44], schema.TIME_COLUMN: t,
              schema.TIMETICK_COLUMN: ticks, "FPOGX": fpog_x, "FPOGY": fpog_y, "FPOGS": t - 0.2,
              "FPOGD": 0.2, "FPOGID": np.arange(n, dtype=float), "BPOGX": fpog_x, "BPOGY": fpog_y,
              "BKID": 0.0, "BKDUR": 0.0, "X_ORIGINAL": x, "Y_ORIGINAL": y}  # fmt: skip
    return pd.DataFrame({c: values.get(c, 1.0) for c in schema.GAZE_COLUMNS}, index=range(n))


def gaze_table(n_per_image: int) -> pd.DataFrame:
    """A gaze file in file order: images 0 and 1, a calibration screen, images 2 and 3."""
    parts = [gaze_rows(k, n_per_image) for k in range(len(SIZES))]
    parts.insert(2, gaze_rows(1, 3, calibration=True))
    return one_based(pd.concat(parts, ignore_index=True))


def one_based(frame: pd.DataFrame) -> pd.DataFrame:
    frame.index = pd.RangeIndex(1, len(frame) + 1)
    return frame


def as_read(frame: pd.DataFrame, path: Path, reader) -> pd.DataFrame:
    """The table as the loader returns it (dtypes, record index), via a real CSV file."""
    frame.to_csv(path, index=False)
    return reader(path)


def build_release(folder: Path) -> tuple[EgdTables, pd.DataFrame]:
    ids = [dicom_id(k) for k in range(len(SIZES))]
    master = pd.DataFrame([master_row(k) for k in range(len(SIZES))])
    fix = as_read(gaze_table(FIXATIONS_PER_IMAGE), folder / "fixations.csv", read_gaze_table)
    gaze = as_read(gaze_table(GAZE_PER_IMAGE), folder / "eye_gaze.csv", read_gaze_table)
    boxes = pd.DataFrame([(i, name, 100.0, w - 100.0, 200.0, h - 1.0)
                          for i, (h, w) in zip(ids, SIZES, strict=True)
                          for name in ("cardiac silhouette", "left clavicle")],
                         columns=list(schema.BBOX_COLUMNS))  # fmt: skip
    phrases = [(i, word, t, t + 0.4) for i in ids for t, word in ((0.5, "clear"), (1.0, "lungs."))]
    transcripts = pd.DataFrame({"dicom_id": ids, "dir_exists": True, "missing_files": "",
                                "full_text": "clear lungs.", "n_phrases": 2})  # fmt: skip
    tables = EgdTables(
        egd_root=folder,
        images_root=folder,
        master=as_read(master, folder / "master_sheet.csv", read_master_sheet),
        fixations=split_calibration(fix)[0],
        gaze=split_calibration(gaze)[0],
        calibration_fixations=split_calibration(fix)[1],
        calibration_gaze=split_calibration(gaze)[1],
        bboxes=as_read(boxes, folder / "bounding_boxes.csv", read_bounding_boxes),
        transcripts=one_based(transcripts),
        phrases=one_based(pd.DataFrame(phrases, columns=["dicom_id", "phrase", "begin_time",
                                                         "end_time"])),
        image_paths=pd.Series([folder / f"{i}.dcm" for i in ids], index=ids),
    )  # fmt: skip
    headers = one_based(pd.DataFrame({
        "dicom_id": ids, "Rows": [h for h, _ in SIZES], "Columns": [w for _, w in SIZES],
        "BitsStored": 12, "PhotometricInterpretation": "MONOCHROME2", "ViewPosition": "PA",
        "WindowCenter": [2048.0, "2048\\1024", 2048.0, None],
        "WindowWidth": [4096.0, "4096\\2048", 4096.0, None],
    }))  # fmt: skip
    return tables, headers


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[EgdTables, pd.DataFrame]:
    return build_release(tmp_path_factory.mktemp("egd-cxr"))


@pytest.fixture(scope="module")
def valid_report(release) -> ValidationReport:
    return validate_egd(*release, expected_images=len(SIZES))


def edited(tables: EgdTables, name: str, edit) -> EgdTables:
    """A copy of ``tables`` whose table ``name`` went through ``edit`` (on a copy)."""
    return dataclasses.replace(tables, **{name: edit(getattr(tables, name).copy())})


def set_cell(row, column, value):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return edit


def records_of(table: pd.DataFrame, k: int) -> list[int]:
    return [int(r) for r in table.index[table["DICOM_ID"] == dicom_id(k)]]


UNKNOWN_ID = dicom_id(99)
GAZE_UNKNOWN = records_of(gaze_table(GAZE_PER_IMAGE), 2)[-2:]
FIXATION_BACKWARDS = records_of(gaze_table(FIXATIONS_PER_IMAGE), 1)[3]


def duplicate_record_3(master: pd.DataFrame) -> pd.DataFrame:
    return one_based(pd.concat([master, master.loc[[3]]], ignore_index=True))


def break_release(tables: EgdTables, headers: pd.DataFrame) -> tuple[EgdTables, pd.DataFrame]:
    """Every fault of the tests below, each in its own records so none hides another."""
    faults = [
        ("master", duplicate_record_3),  # record 5 repeats record 3's dicom_id
        ("master", set_cell(2, "Normal", 1)),  # record 2 is CHF and Normal
        ("master", set_cell(3, "patient_id", 10_999_999)),  # path no longer matches
        ("master", set_cell(1, "dx1_icd", "I50-9")),
        ("master", set_cell(1, "edema__chx", 2.0)),
        ("master", set_cell(1, "gender", "<script>alert(1)</script>")),
        ("gaze", set_cell(GAZE_UNKNOWN, "DICOM_ID", UNKNOWN_ID)),
        ("gaze", lambda g: g[g["DICOM_ID"] != dicom_id(3)]),  # image 3 (record 4): no gaze
        ("fixations", set_cell(FIXATION_BACKWARDS, schema.TIME_COLUMN, 0.05)),
        ("fixations", set_cell([3, 17], "X_ORIGINAL", np.nan)),
        ("bboxes", set_cell(5, "x1", 5000.0)),
        ("transcripts", set_cell(3, "missing_files", "audio.mp3;aortic_knob.png")),
        ("calibration_gaze", lambda g: g.drop(columns="VID_FRAME")),
    ]
    for name, fault in faults:
        tables = edited(tables, name, fault)
    return tables, set_cell(2, "Rows", 3056)(headers.copy())  # pads now disagree


@pytest.fixture(scope="module")
def broken_report(release) -> ValidationReport:
    return validate_egd(*break_release(*release), expected_images=len(SIZES))


def assert_failure(report: ValidationReport, *parts: str, records: tuple = ()) -> None:
    """The run failed, and a failed error check's line has every part; it names ``records``."""
    assert report.success is False
    found = [c for c in report.failures if all(p in c.line() for p in parts)]
    assert found, f"no failed check with {parts} in:\n{report.summary()}"
    assert [c.records for c in found] == [records], [c.line() for c in found]


OUTSIDE_WARNINGS = {("fixations.csv per image", ("outside_image_fraction",)),
                    ("eye_gaze.csv per image", ("outside_image_fraction",))}  # fmt: skip
"""Every image's first sample looks at the screen's left edge, outside the image: real data has
such samples, and they are warnings."""


def test_valid_release_passes(valid_report):
    assert valid_report.success, valid_report.summary()
    assert valid_report.failures == []
    assert {(c.suite, c.columns) for c in valid_report.warnings} == OUTSIDE_WARNINGS
    n = len(valid_report.checks)
    assert valid_report.headline() == (
        f"EGD-CXR validation passed: 0 error(s), 2 warning(s), {n - 2} of {n} checks passed in "
        "11 suites"
    )
    assert len(valid_report.checks) > 150
    assert valid_report.statistics["eye_gaze.csv"]["rows"] == 4 * GAZE_PER_IMAGE


def test_every_fault_fails_and_nothing_else(broken_report):
    failed = {(c.suite, c.expectation.removeprefix("expect_"), *c.columns)
              for c in broken_report.failures}  # fmt: skip
    assert failed == {
        ("master_sheet.csv", "table_row_count_to_equal"),
        ("master_sheet.csv", "column_values_to_be_unique", "dicom_id"),
        ("master_sheet.csv", "column_values_to_be_in_set", "gender"),
        ("master_sheet.csv", "column_pair_values_to_be_equal", "path", "path_from_ids"),
        ("master_sheet.csv", "column_pair_values_to_be_equal", "image_pads",
         "image_pads_from_dicom_size"),
        ("master_sheet.csv", "column_values_to_match_regex", "dx1_icd"),
        ("master_sheet.csv", "column_values_to_be_in_set", "class_one_hot_sum"),
        ("master_sheet.csv", "column_values_to_be_in_set", "edema__chx"),
        ("master_sheet.csv", "column_values_to_be_between", "eye_gaze_rows_inside_image"),
        ("fixations.csv", "column_values_to_not_be_null", "X_ORIGINAL"),
        ("fixations.csv", "column_values_to_be_between", "time_step_in_image"),
        ("fixations.csv", "column_values_to_be_between", "clock_drift_in_image"),
        ("fixations.csv", "column_values_to_be_between", "time_minus_fixation_end"),
        ("eye_gaze.csv", "column_values_to_be_in_set", "DICOM_ID"),
        ("eye_gaze.csv (calibration screens)", "table_columns_to_match_ordered_list"),
        ("bounding_boxes.csv", "column_pair_values_a_to_be_greater_than_b", "x2", "x1"),
    }  # fmt: skip


def test_label_row_not_one_hot(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "(class_one_hot_sum)",
                   "e.g. [{'Normal': 1, 'CHF': 1, 'pneumonia': 0}], record 2",
                   records=(2,))  # fmt: skip


def test_duplicate_dicom_id(broken_report):
    assert_failure(broken_report, "master_sheet.csv: expect_column_values_to_be_unique(dicom_id)",
                   "records [3, 5]", records=(3, 5))  # fmt: skip


def test_gaze_rows_of_unknown_image(broken_report):
    assert_failure(broken_report, "eye_gaze.csv: expect_column_values_to_be_in_set(DICOM_ID)",
                   f"2 of 60 rows unexpected, e.g. ['{UNKNOWN_ID}', '{UNKNOWN_ID}'], "
                   f"records {GAZE_UNKNOWN}", records=tuple(GAZE_UNKNOWN))  # fmt: skip


def test_time_going_backwards_within_an_image(broken_report):
    for column in ("(time_step_in_image)", "(time_minus_fixation_end)"):
        assert_failure(broken_report, "fixations.csv:", column, f"record {FIXATION_BACKWARDS}",
                       records=(FIXATION_BACKWARDS,))  # fmt: skip


def test_missing_coordinates(broken_report):
    assert_failure(broken_report, "fixations.csv: expect_column_values_to_not_be_null(X_ORIGINAL)"
                   ": 2 of 24 rows unexpected, e.g. [nan, nan], records [3, 17]",
                   records=(3, 17))  # fmt: skip


def test_image_without_gaze(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "(eye_gaze_rows_inside_image)",
                   "e.g. [0], record 4", records=(4,))  # fmt: skip


def test_dicom_size_inconsistent_with_pads(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "(image_pads, image_pads_from_dicom_size)",
                   f"e.g. [{{'dicom_id': '{dicom_id(1)}', 'image_pads': '86,86,448,448', "
                   "'image_pads_from_dicom_size': '0,0,448,448'}], record 2",
                   records=(2,))  # fmt: skip


def test_path_not_matching_patient_and_study(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "(path, path_from_ids)", "/p10999999/",
                   "record 3", records=(3,))  # fmt: skip


def test_bbox_with_left_edge_right_of_right_edge(broken_report):
    assert_failure(broken_report, "bounding_boxes.csv:", "_a_to_be_greater_than_b(x2, x1)",
                   "e.g. [(2439.0, 5000.0)], record 5", records=(5,))  # fmt: skip


def test_transcript_folder_missing_files_is_a_warning(broken_report):
    (found,) = [c for c in broken_report.warnings if c.columns == ("missing_files",)]
    assert found.suite == "audio_segmentation_transcripts" and found.records == (3,)
    assert f"{dicom_id(2)}', 'missing_files': 'audio.mp3;aortic_knob.png'}}], record 3" in \
        found.line()  # fmt: skip
    assert "no step reads it" in found.line()


def test_bad_icd_code(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "match_regex(dx1_icd)",
                   "e.g. ['I50-9'], record 1", records=(1,))  # fmt: skip


def test_chexpert_value_outside_tri_state(broken_report):
    assert_failure(broken_report, "master_sheet.csv:", "be_in_set(edema__chx)",
                   "e.g. [2.0], record 1", records=(1,))  # fmt: skip


def test_wrong_image_count(broken_report):
    assert_failure(broken_report, "master_sheet.csv: expect_table_row_count_to_equal()",
                   "observed 5 [value=4]")  # fmt: skip


def test_table_without_its_columns_gets_only_the_column_check(broken_report):
    suite = "eye_gaze.csv (calibration screens)"
    checks = [c for c in broken_report.checks if c.suite == suite]
    assert [c.expectation for c in checks] == ["expect_table_columns_to_match_ordered_list"]
    assert_failure(broken_report, f"{suite}:", "'Expected': 'VID_FRAME'")


def look_off_screen(k: int, share: float):
    """An edit of a gaze table: the last ``share`` of image k's rows look below the screen
    (FPOGY = BPOGY = 1.05), X/Y_ORIGINAL mapped as the release maps them (negative)."""

    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        rows = records_of(frame, k)
        rows = rows[len(rows) - round(share * len(rows)) :]
        frame.loc[rows, ["FPOGY", "BPOGY"]] = 1.05
        x, y = screen_to_native(frame.loc[rows, "FPOGX"], frame.loc[rows, "FPOGY"],
                                display_pads(SIZES[k]), SIZES[k])  # fmt: skip
        frame.loc[rows, "X_ORIGINAL"], frame.loc[rows, "Y_ORIGINAL"] = x, y
        return frame

    return edit


def test_warnings_do_not_fail(release):
    """Real-data quirks below the limits: warned with counts and per-image fractions, not failed."""
    tables, headers = release
    headers = set_cell(4, "PhotometricInterpretation", "MONOCHROME1")(headers.copy())
    tables = edited(tables, "gaze", look_off_screen(1, 0.05))  # 1 of image 1's 20 samples
    no_folder = [False, ";".join(schema.TRANSCRIPT_FILES), None]
    no_folders = set_cell([1, 2, 3, 4], ["dir_exists", "missing_files", "full_text"], no_folder)
    tables = edited(tables, "transcripts", no_folders)
    tables = dataclasses.replace(tables, phrases=tables.phrases.iloc[:0])
    report = validate_egd(tables, headers, expected_images=len(SIZES))
    assert report.success, report.summary()
    assert report.failures == []
    warned = {(c.suite, c.columns) for c in report.warnings}
    assert warned == OUTSIDE_WARNINGS | {
        ("eye_gaze.csv per image", ("offscreen_fraction",)),
        ("audio_segmentation_transcripts", ("dir_exists",)),
        ("audio_segmentation_transcripts", ("missing_files",)),
        ("DICOM headers", ("PhotometricInterpretation",)),
    }
    lines = report.summary().splitlines()
    assert lines[0].startswith("EGD-CXR validation passed: 0 error(s), 6 warning(s)")
    assert lines[1] == "Warnings (do not fail the step):"
    offscreen = next(line for line in lines if "(offscreen_fraction)" in line)
    assert offscreen == (
        "  eye_gaze.csv per image: expect_column_values_to_be_between(offscreen_fraction): 1 of 4 "
        f"images unexpected, e.g. [{{'dicom_id': '{dicom_id(1)}', 'offscreen': 1, 'rows': 20, "
        "'offscreen_fraction': 0.05}], record 2 [max_value=0.0] -- 1 of 80 samples (1.2%) are off "
        "screen (FPOG or BPOG outside [0, 1]): dropped from the heatmaps; an image fails above "
        "data.validation.max_offscreen_fraction = 0.1"
    )
    assert any("MONOCHROME1" in line and "record 4" in line for line in lines)


def test_offscreen_past_the_limit_fails_naming_the_image_and_the_limit(release):
    tables, headers = release
    tables = edited(tables, "gaze", look_off_screen(2, 0.3))
    report = validate_egd(tables, headers, expected_images=len(SIZES))
    assert_failure(report, "eye_gaze.csv per image: expect_column_values_to_be_between("
                   f"offscreen_fraction): 1 of 4 images unexpected, e.g. [{{'dicom_id': "
                   f"'{dicom_id(2)}', 'offscreen': 6, 'rows': 20, 'offscreen_fraction': 0.3}}], "
                   "record 3 [max_value=0.1] -- at most data.validation.max_offscreen_fraction = "
                   "0.1 (params.yaml) of an image's samples are off screen",
                   records=(3,))  # fmt: skip
    assert {(c.suite, c.columns) for c in report.failures} == {
        ("eye_gaze.csv per image", ("offscreen_fraction",))
    }
    # The same release under a looser params.yaml limit passes, still warning.
    limits = ValidationConfig(max_offscreen_fraction=0.3)
    looser = validate_egd(tables, headers, expected_images=len(SIZES), limits=limits)
    assert looser.success, looser.summary()
    assert ("eye_gaze.csv per image", ("offscreen_fraction",)) in {
        (c.suite, c.columns) for c in looser.warnings
    }


def test_per_image_samples_counts_each_image_of_the_master_sheet(release):
    tables, _ = release
    gaze = look_off_screen(2, 0.3)(tables.gaze.copy())
    ids = pd.Series([dicom_id(2), dicom_id(0), UNKNOWN_ID], index=[3, 1, 7])
    found = per_image_samples(gaze, ids)
    assert found.index.tolist() == [3, 1, 7]
    assert found.to_dict(orient="list") == {
        "dicom_id": [dicom_id(2), dicom_id(0), UNKNOWN_ID],
        "rows": [20, 20, 0],
        "offscreen": [6, 0, 0],
        "offscreen_fraction": [0.3, 0.0, 0.0],
        "outside_image": [7, 1, 0],  # the first sample of each image looks beside the image
        "outside_image_fraction": [0.35, 0.05, 0.0],
    }


def test_reports_are_written_and_escaped(broken_report, tmp_path):
    json_path, html_path = tmp_path / "out" / "validation.json", tmp_path / "validation.html"
    broken_report.write(json_path, html_path)
    data = json.loads(json_path.read_text())
    assert data["success"] is False
    assert data["headline"] == broken_report.headline()
    checks = data["suites"]["master_sheet.csv"]["checks"]
    gender = next(c for c in checks if c["columns"] == ["gender"])
    assert gender["records"] == [1] and gender["examples"] == ["<script>alert(1)</script>"]
    nulls = next(c for c in data["suites"]["fixations.csv"]["checks"]
                 if c["expectation"] == "expect_column_values_to_not_be_null"
                 and c["columns"] == ["X_ORIGINAL"])  # fmt: skip
    assert nulls["examples"] == [None, None] and nulls["unexpected_count"] == 2
    assert data["suites"]["eye_gaze.csv"]["statistics"]["evaluated_expectations"] > 30
    # Errors and warnings have their own sections, each finding with its line (counts, examples).
    assert [e["line"] for e in data["errors"]] == [c.line() for c in broken_report.failures]
    assert [w["line"] for w in data["warnings"]] == [c.line() for c in broken_report.warnings]
    missing = next(w for w in data["warnings"] if w["columns"] == ["missing_files"])
    assert missing["unexpected_count"] == 1 and missing["records"] == [3]
    assert missing["examples"] == [{"dicom_id": dicom_id(2),
                                    "missing_files": "audio.mp3;aortic_knob.png"}]  # fmt: skip
    page = html_path.read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count('<tr class="fail">') == len(broken_report.failures)
    assert page.count('<tr class="warning">') == len(broken_report.warnings)
    n_errors, n_warnings = len(broken_report.failures), len(broken_report.warnings)
    assert f'<h2 id="errors">Errors: {n_errors} (fail the step)</h2>' in page
    assert f'<h2 id="warnings">Warnings: {n_warnings} (reported, do not fail the step)</h2>' in page
    assert page.count('<tr class="error">') == n_errors
    assert page.count('<tr class="warn">') == n_warnings
    warnings_section = page.split('<h2 id="warnings">')[1].split("<h2>")[0]
    assert "audio.mp3;aortic_knob.png" in warnings_section and "1 of 4 rows" in warnings_section
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "validation.html",
                                                           "validation.json"]  # fmt: skip


def test_validation_failed_names_the_failures_and_the_report(broken_report, tmp_path):
    err = ValidationFailed(broken_report, tmp_path / "validation.html")
    lines = str(err).splitlines()
    assert lines[0] == broken_report.headline()
    assert lines[1:-1] == [c.line() for c in broken_report.failures]
    assert lines[-1] == f"full report: {tmp_path / 'validation.html'}"
    assert err.report is broken_report


@pytest.mark.parametrize(
    ("value", "expected"),
    [(4096.0, 4096.0), ("4096\\2048", 4096.0), ([400, 40], 400.0), ("", None), (None, None)],
)
def test_first_value_of_a_multi_valued_header_field(value, expected):
    result = _first_number(value)
    assert result == expected if expected is not None else np.isnan(result)


@pytest.mark.parametrize("pattern", [schema.DICOM_ID_RE, schema.MASTER_PATH_RE, schema.ICD_RE])
def test_patterns_given_to_gx_match_like_the_schema(pattern):
    """GX gets non-capturing copies of the schema patterns; they accept the same strings."""
    samples = [dicom_id(1), dicom_id(1)[:39], master_row(2)["path"], "428", "I50.9", "79.99", "x"]
    copy = re.compile(_regex(pattern))
    assert "(?:" in copy.pattern and copy.groups == 0
    assert [bool(copy.match(v)) for v in samples] == [bool(pattern.match(v)) for v in samples]


@pytest.mark.slow
def test_large_gaze_table_is_fast(release):
    tables, headers = release
    n = 50_000  # per image: 200k rows in all
    gaze, _ = split_calibration(gaze_table(n))
    # CPU time of this process: the machine running the tests is shared, wall time is not ours.
    started = time.process_time()
    report = validate_egd(dataclasses.replace(tables, gaze=gaze), headers)
    elapsed = time.process_time() - started
    assert report.success, report.summary()
    assert report.statistics["eye_gaze.csv"]["rows"] == 4 * n
    assert elapsed < 10, f"validating {4 * n:,} gaze rows took {elapsed:.1f} s of CPU"
