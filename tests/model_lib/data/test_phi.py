"""Which identifying DICOM fields a header fills: every listed field filled, as a placeholder and
absent, both as written to a file (raw bytes, as ingest reads them) and in memory."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from model_lib.data.dicom_io import HEADER_FIELDS, read_dicom_header, scan_dicom_header
from model_lib.data.phi import (
    IDENTIFYING_FIELDS,
    PSEUDONYM_PATTERNS,
    SHIFTED_DATE_FIELDS,
    identifying_fields,
    is_placeholder,
)

# A value of each VR that a real header might carry, distinct enough to search for.
FILLED_BY_VR = {
    "PN": "ZZPHI^PLANTED",
    "DA": "19010101",
    "DT": "19010101120000",
    "TM": "101500",
    "AS": "067Y",
    "SH": "ZZPHI-77731",
    "LO": "ZZPHI-HOSPITAL",
    "ST": "1 ZZPHI Street, Boston",
    "LT": "ZZPHI comment",
}
PLACEHOLDERS = ("", "___", "ANONYMOUS", "  ", "^^", "REMOVED")


def vr(keyword: str) -> str:
    return dictionary_VR(tag_for_keyword(keyword))


def filled_value(keyword: str) -> object:
    if vr(keyword) == "SQ":
        item = Dataset()
        item.PatientID = "ZZPHI-77731"
        return Sequence([item])
    return FILLED_BY_VR[vr(keyword)]


def header(**fields: object) -> Dataset:
    """A de-identified MIMIC-like DX header (as the synthetic writer fills it) plus ``fields``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientSex = "DX", "PA", "F"
    ds.PatientName, ds.PatientBirthDate = "___", ""
    ds.ReferringPhysicianName, ds.AccessionNumber = "", ""
    ds.PatientID, ds.StudyID = "10000032", "50414267"
    ds.StudyDate = ds.SeriesDate = "21800506"
    ds.StudyTime = "120000"
    with disable_value_validation():  # placeholders such as '___' are not valid dates
        for keyword, value in fields.items():
            if vr(keyword) == "SQ" or not isinstance(value, str):
                setattr(ds, keyword, value)
            else:
                ds.add_new(tag_for_keyword(keyword), vr(keyword), value)
    return ds


def as_read(ds: Dataset, transfer_syntax=ExplicitVRLittleEndian) -> Dataset:
    """Write and read back, stopping before the pixels: values stay raw, as in ingest."""
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


@pytest.fixture(params=["read", "in_memory"])
def load(request):
    return as_read if request.param == "read" else (lambda ds: ds)


def test_the_synthetic_release_header_fills_nothing(load) -> None:
    assert identifying_fields(load(header())) == ()


def test_the_list_covers_the_issue_and_never_overlaps_the_whitelist() -> None:
    named = {"PatientName", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
             "OtherPatientNames", "PatientAddress", "PatientTelephoneNumbers", "InstitutionName",
             "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
             "OperatorsName", "AccessionNumber", "StudyDate", "SeriesDate", "AcquisitionDate",
             "ContentDate", "PatientAge", "PatientID", "StudyID"}  # fmt: skip
    assert named <= set(IDENTIFYING_FIELDS)
    assert len(set(IDENTIFYING_FIELDS)) == len(IDENTIFYING_FIELDS)
    assert not set(IDENTIFYING_FIELDS) & set(HEADER_FIELDS)
    assert all(tag_for_keyword(k) is not None for k in IDENTIFYING_FIELDS)


@pytest.mark.parametrize("keyword", IDENTIFYING_FIELDS)
def test_each_field_filled(keyword: str, load) -> None:
    found = identifying_fields(load(header(**{keyword: filled_value(keyword)})))
    # A filled OtherPatientIDsSequence carries another PatientID, which is flagged too.
    expected = {keyword} | ({"PatientID"} if vr(keyword) == "SQ" else set())
    assert set(found) == expected


@pytest.mark.parametrize("keyword", IDENTIFYING_FIELDS)
@pytest.mark.parametrize("placeholder", PLACEHOLDERS)
def test_each_field_as_a_placeholder(keyword: str, placeholder: str, load) -> None:
    value = Sequence() if vr(keyword) == "SQ" else placeholder
    assert identifying_fields(load(header(**{keyword: value}))) == ()


@pytest.mark.parametrize("keyword", IDENTIFYING_FIELDS)
def test_each_field_absent(keyword: str, load) -> None:
    ds = header(**{keyword: filled_value(keyword)})
    delattr(ds, keyword)
    assert keyword not in identifying_fields(load(ds))


@pytest.mark.parametrize(
    ("keyword", "value", "identifying"),
    [
        ("PatientID", "10000032", False),  # MIMIC subject_id: the master sheet's own id
        ("PatientID", "MRN0012345", True),
        ("PatientID", "20000032", True),
        ("PatientID", "100000321", True),
        ("StudyID", "50414267", False),  # MIMIC study_id
        ("StudyID", "1234", True),
        ("StudyDate", "21800506", False),  # shifted into the future, as MIMIC does
        ("StudyDate", "20991231", True),
        ("StudyDate", "2018", True),
        ("AcquisitionDateTime", "21800506101500", False),
        ("AcquisitionDateTime", "20180506101500.000", True),
        ("ContentDate", "notadate", True),
        ("PatientBirthDate", "21500101", True),  # a birth date is never allowed, shifted or not
        ("OtherPatientNames", "___\\ZZPHI^OTHER", True),  # one filled value of several
        ("OtherPatientNames", "___\\ANONYMOUS", False),
        ("InstitutionName", "anonymized", False),
        ("InstitutionName", "N/A", False),
        ("InstitutionName", "Beth Israel", True),
    ],
)
def test_rules(keyword: str, value: str, identifying: bool, load) -> None:
    found = identifying_fields(load(header(**{keyword: value})))
    assert found == ((keyword,) if identifying else ())


def test_nested_fields_are_found_and_private_tags_ignored(load) -> None:
    ds = header()
    request = Dataset()
    request.AccessionNumber = "ZZPHI-77731"
    request.RequestingPhysician = "___"
    ds.RequestAttributesSequence = Sequence([request])
    ds.add_new(0x00090010, "LO", "ZZPHI private creator")
    ds.add_new(0x00091001, "LO", "ZZPHI^PRIVATE")
    assert identifying_fields(load(ds)) == ("AccessionNumber",)


def test_implicit_vr_file() -> None:
    ds = header(PatientName="ZZPHI^PLANTED", StudyDate="20180101")
    assert identifying_fields(as_read(ds, ImplicitVRLittleEndian)) == ("PatientName", "StudyDate")


def test_order_follows_the_list() -> None:
    ds = header(InstitutionName="ZZPHI-HOSPITAL", PatientName="ZZPHI^PLANTED",
                OtherPatientIDs="ZZPHI-77731", PatientBirthDate="19010101")  # fmt: skip
    found = identifying_fields(as_read(ds))
    assert found == tuple(k for k in IDENTIFYING_FIELDS if k in found)
    assert set(found) == {"InstitutionName", "PatientName", "OtherPatientIDs", "PatientBirthDate"}


def test_malformed_values_are_flagged_without_showing_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pydicom warns and logs a malformed value *with the value* when converting it; the check
    reads raw bytes, so nothing is warned or logged."""
    ds = header(PatientBirthDate="ZZPHI-NOT-A-DATE", PatientAge="ZZPHI-AGE")
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = identifying_fields(as_read(ds))
    assert found == ("PatientBirthDate", "PatientAge")
    shown = caplog.text + "".join(str(w.message) for w in caught)
    assert "ZZPHI" not in shown


@pytest.mark.parametrize("text", (*PLACEHOLDERS, "_", "***", "--", "Anonymous^", "none"))
def test_placeholders(text: str) -> None:
    assert is_placeholder(text)


@pytest.mark.parametrize("text", ["ZZPHI", "X", "Jane^Doe", "0", "19010101"])
def test_not_placeholders(text: str) -> None:
    assert not is_placeholder(text)


def test_rule_tables_name_listed_fields() -> None:
    assert set(PSEUDONYM_PATTERNS) | set(SHIFTED_DATE_FIELDS) <= set(IDENTIFYING_FIELDS)


def test_scan_reads_the_header_once_and_returns_names_only(tmp_path: Path) -> None:
    ds = header(PatientName="ZZPHI^PLANTED", InstitutionName="ZZPHI-HOSPITAL")
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored = 4, 3, 16, 12
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.HighBit, ds.PixelRepresentation = 11, 0
    ds.PixelData = np.zeros((4, 3), np.uint16).tobytes()
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    fields, found = scan_dicom_header(path)
    assert fields == read_dicom_header(path)
    assert set(fields) == set(HEADER_FIELDS)
    assert found == ("PatientName", "InstitutionName")
    assert "ZZPHI" not in repr((fields, found))
