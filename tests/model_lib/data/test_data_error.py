"""DataError: one line naming the file, the record or field, and the image when it is about one."""

from __future__ import annotations

import pickle
from pathlib import Path

import pandas as pd
import pytest

from model_lib.data.egd_cxr import EgdTables, naming_images
from model_lib.data.errors import DataError


def test_names_the_image_before_the_file():
    err = DataError("/x/a.dcm", "not a DICOM file", field="PixelData", dicom_id="0a1b")
    assert str(err) == "image 0a1b: /x/a.dcm, field 'PixelData': not a DICOM file"
    assert (err.file, err.dicom_id, err.field, err.row) == ("/x/a.dcm", "0a1b", "PixelData", None)


def test_without_an_image_it_reads_as_before():
    err = DataError("m.csv", "empty value", row=3, field="gender")
    assert str(err) == "m.csv, record 3, field 'gender': empty value" and err.dicom_id is None


def test_a_library_message_on_several_lines_becomes_one():
    err = DataError("a.dcm", "cannot parse:\n  bad tag\r\n(0028,0010)")
    assert str(err) == "a.dcm: cannot parse: bad tag (0028,0010)"
    assert "\n" not in str(err) and "\r" not in str(err)


def test_for_image_keeps_everything_else():
    err = DataError("m.csv", "image file not found: x.dcm", row=8, field="path").for_image("id7")
    assert str(err) == "image id7: m.csv, record 8, field 'path': image file not found: x.dcm"
    assert (err.row, err.field) == (8, "path")


def test_survives_a_process_pool():
    err = DataError("a.dcm", "bad", row=2, field="Rows", dicom_id="id")
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err)
    assert (copy.file, copy.row, copy.field, copy.dicom_id) == ("a.dcm", 2, "Rows", "id")


def _tables(root: Path) -> EgdTables:
    empty = pd.DataFrame()
    master = pd.DataFrame({"dicom_id": ["id-a", "id-b"]}, index=[1, 2])
    paths = pd.Series([root / "img" / "a.dcm", root / "img" / "b.jpg"], index=["id-a", "id-b"])
    return EgdTables(root / "egd", root / "img", master, empty, empty, empty, empty, empty, empty,
                     empty, paths)  # fmt: skip


@pytest.mark.parametrize(
    ("raised", "expected"),
    [(DataError("{root}/img/b.jpg", "cannot decode image"),
      "image id-b: {root}/img/b.jpg: cannot decode image"),
     (DataError("{root}/egd/master_sheet.csv", "image file not found", row=1, field="path"),
      "image id-a: {root}/egd/master_sheet.csv, record 1, field 'path': image file not found"),
     (DataError("{root}/egd/fixations.csv", "empty value", row=1), None),  # not about an image
     (DataError("{root}/img/a.dcm", "bad", dicom_id="named"), None)],  # already named
)  # fmt: skip
def test_naming_images(tmp_path: Path, raised: DataError, expected: str | None):
    raised = DataError(raised.file.format(root=tmp_path), raised.message, row=raised.row,
                       field=raised.field, dicom_id=raised.dicom_id)  # fmt: skip
    with pytest.raises(DataError) as info, naming_images(_tables(tmp_path)):
        raise raised
    if expected is None:
        assert info.value is raised
    else:
        assert str(info.value) == expected.format(root=tmp_path)
        assert info.value.file == raised.file and info.value.__cause__ is raised
