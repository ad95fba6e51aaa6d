from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from model_lib.data import schema
from model_lib.data.egd_cxr import class_labels, load_egd_cxr, read_gaze_table, read_master_sheet
from model_lib.data.errors import DataError


@pytest.fixture(scope="module")
def tables(tiny_release: Path):
    return load_egd_cxr(tiny_release / "egd-cxr", tiny_release / "mimic-cxr")


def test_reads_every_table_in_the_released_shape(tables, tiny_release: Path) -> None:
    assert tuple(tables.master.columns) == schema.MASTER_SHEET_COLUMNS
    assert tuple(tables.fixations.columns) == schema.GAZE_COLUMNS
    assert len(tables.master) == 24
    assert tables.master.index[0] == 1  # records are numbered from 1 for error messages
    physical_lines = (tiny_release / "egd-cxr/master_sheet.csv").read_text().count("\n")
    assert physical_lines > len(tables.master) + 1  # a quoted indication spans lines
    assert tables.master["patient_id"].dtype == "int64"
    assert tables.master["stay_id"].dtype == "Int64"


def test_calibration_rows_are_set_apart(tables) -> None:
    assert len(tables.calibration_fixations) > 0
    assert (tables.calibration_fixations["DICOM_ID"].str.len() == 39).all()
    assert (tables.fixations["DICOM_ID"].str.len() == 44).all()
    assert set(tables.gaze["DICOM_ID"]) <= set(tables.master["dicom_id"])


def test_every_image_is_located(tables) -> None:
    assert all(Path(p).is_file() for p in tables.image_paths)
    assert len(tables.transcripts) == len(tables.master)
    assert (tables.transcripts["missing_files"] == "").all()


def test_class_labels_follow_the_one_hot_columns(tables) -> None:
    labels = class_labels(tables.master)
    expected = tables.master["CHF"] * 1 + tables.master["pneumonia"] * 2
    assert (labels == expected.to_numpy()).all()


def test_jpg_release_is_found(tiny_release: Path, tmp_path: Path) -> None:
    images = tmp_path / "mimic-cxr-jpg"
    for dcm in (tiny_release / "mimic-cxr").rglob("*.dcm"):
        target = images / dcm.relative_to(tiny_release / "mimic-cxr").with_suffix(".jpg")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"")
    tables = load_egd_cxr(tiny_release / "egd-cxr", images)
    assert all(Path(p).suffix == ".jpg" for p in tables.image_paths)


def test_a_value_that_is_not_a_number_names_its_record(tiny_release: Path, tmp_path) -> None:
    path = tmp_path / "master_sheet.csv"
    df = pd.read_csv(tiny_release / "egd-cxr/master_sheet.csv", dtype=str, keep_default_na=False)
    df.loc[4, "patient_id"] = "1234abcd"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"record 5, field 'patient_id'.*1234abcd"):
        read_master_sheet(path)


def test_gaze_table_text_in_a_numeric_column_names_its_record(tiny_release, tmp_path) -> None:
    path = tmp_path / "fixations.csv"
    df = pd.read_csv(tiny_release / "egd-cxr/fixations.csv", dtype=str, keep_default_na=False)
    df.loc[7, "FPOGX"] = "left"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"fixations.csv, record 8, field 'FPOGX'"):
        read_gaze_table(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda df: df.drop(columns=["CNT"]), r"field 'CNT'.*missing column"),
        (lambda df: df.assign(extra=1), r"field 'extra'.*unexpected column"),
        (lambda df: df[[*df.columns[1:], df.columns[0]]], r"not in the released order"),
    ],
)
def test_column_problems_name_the_column(tiny_release, tmp_path, edit, message) -> None:
    path = tmp_path / "eye_gaze.csv"
    df = pd.read_csv(tiny_release / "egd-cxr/eye_gaze.csv", dtype=str, keep_default_na=False)
    edit(df).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        read_gaze_table(path)


def test_missing_and_empty_files(tiny_release, tmp_path) -> None:
    egd = tmp_path / "egd-cxr"
    shutil.copytree(tiny_release / "egd-cxr", egd)
    (egd / "bounding_boxes.csv").write_text("")
    with pytest.raises(DataError, match=r"bounding_boxes.csv: file is empty"):
        load_egd_cxr(egd, tiny_release / "mimic-cxr")
    (egd / "bounding_boxes.csv").unlink()
    with pytest.raises(DataError, match=r"bounding_boxes.csv: file not found"):
        load_egd_cxr(egd, tiny_release / "mimic-cxr")


def test_broken_transcript_json_is_named(tiny_release, tmp_path) -> None:
    egd = tmp_path / "egd-cxr"
    shutil.copytree(tiny_release / "egd-cxr", egd)
    victim = next((egd / "audio_segmentation_transcripts").iterdir()) / "transcript.json"
    victim.write_text('{"full_text": "x", "time_stamped_text": [{"phrase": "a"}]}')
    with pytest.raises(DataError, match=r"transcript.json, record 1, field 'time_stamped_text'"):
        load_egd_cxr(egd, tiny_release / "mimic-cxr")
