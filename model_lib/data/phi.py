"""Identifying DICOM header fields: which ones a file fills, by name, never by value.

Ingest keeps only the whitelisted :data:`~model_lib.data.dicom_io.HEADER_FIELDS`, so identifying
values never reach the store. This module finds files that still carry them, so that validation
can refuse the release (``data.phi_policy: fail``) or record that they were left behind
(``strip``). The values are never converted, returned, logged or put in a message: pydicom's
value validation warns and logs the offending value itself, so the raw bytes are read instead.

The set (:data:`IDENTIFYING_FIELDS`) is the fields that name, locate or contact the patient, the
staff or the institution, identify the patient or the visit, or date the visit (HIPAA Safe
Harbor's identifiers as they appear in a DX header; DICOM PS3.15 Annex E's basic profile covers
them). Two rules follow MIMIC-CXR's de-identification, which keeps pseudonyms and shifted dates:

- ``PatientID`` and ``StudyID`` hold MIMIC's pseudonymous ``subject_id`` (8 digits, starting
  with 1) and ``study_id`` (8 digits, starting with 5; datasets.md 4.1). They are the ids of the
  master sheet and the image path, so only another value (a hospital number) is identifying.
- Visit dates are shifted into the years 2100-2200 (MIMIC's ``anchor_year`` convention, also what
  the synthetic generator writes). A date before :data:`SHIFTED_FROM_YEAR` is a real date and is
  identifying; a birth date is identifying whatever its year.

Both rules, and whether real MIMIC-CXR headers fill PatientAge or StationName, are UNVERIFIED on
the real files (they were not downloaded): check them first; ``strip`` ingests regardless.
pydicom's debug mode (``pydicom.config.debug(True)``) logs every element read, values included:
never turn it on for real data.

Left out: PatientSex (not an identifier, and ingest does not read it), scanner fields such as
DeviceSerialNumber and Manufacturer, private tags (they never leave ingest either), the file
meta group and JPEG/PNG inputs, which have no such header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

SHIFTED_FROM_YEAR = 2100
"""MIMIC shifts every date into 2100-2200; an earlier year is a real date."""

_PATIENT = (
    "PatientName",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientAddress",
    "RegionOfResidence",
    "PatientTelephoneNumbers",
    "PatientTelecomInformation",
    "PatientComments",
    "ResponsiblePerson",
    "MilitaryRank",
)
_IDENTIFIERS = (
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "IssuerOfPatientID",
    "MedicalRecordLocator",
    "AdmissionID",
    "AccessionNumber",
    "StudyID",
)
_STAFF_AND_PLACE = (
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "OperatorsName",
)
SHIFTED_DATE_FIELDS: tuple[str, ...] = (
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "AcquisitionDateTime",
)
PSEUDONYM_PATTERNS: dict[str, re.Pattern[str]] = {
    "PatientID": re.compile(r"1\d{7}"),
    "StudyID": re.compile(r"5\d{7}"),
}
"""Fields whose MIMIC pseudonym (this pattern, whole value) is not identifying."""

IDENTIFYING_FIELDS: tuple[str, ...] = (*_PATIENT, *_IDENTIFIERS, *_STAFF_AND_PLACE,
                                       *SHIFTED_DATE_FIELDS)  # fmt: skip
"""DICOM keywords checked, in report order. Found at any depth (inside sequences too)."""

PLACEHOLDERS: frozenset[str] = frozenset({"ANON", "ANONYMOUS", "ANONYMIZED", "ANONYMISED",
    "REMOVED", "DELETED", "REDACTED", "NONE", "NULL", "UNKNOWN", "NA", "N/A"})  # fmt: skip
"""Values that stand for a removed one (compared upper-case, after dropping name separators and
spaces). Runs of ``_ * - . ?`` (MIMIC writes ``___``) and empty values are placeholders too."""

_MASK_CHARACTERS = frozenset("_*-.?")
_TAGS: dict[BaseTag, str] = {Tag(tag_for_keyword(k)): k for k in IDENTIFYING_FIELDS}


def identifying_fields(ds: Dataset) -> tuple[str, ...]:
    """Keywords of :data:`IDENTIFYING_FIELDS` that ``ds`` fills, in that order, each once.

    ``ds`` is a header as ``pydicom.dcmread`` returns it (``stop_before_pixels`` is enough).
    A field counts as filled unless it is absent, empty or a placeholder, or is a MIMIC
    pseudonym or shifted date where those are allowed (module docstring). A value that cannot
    be read counts as filled: it cannot be shown to be empty. Values are read as raw bytes and
    never leave this function.
    """
    found: set[str] = set()
    for item in _datasets(ds):
        for tag in list(item.keys()):
            keyword = _TAGS.get(tag)
            if keyword is not None and keyword not in found and _filled(item, tag, keyword):
                found.add(keyword)
    return tuple(k for k in IDENTIFYING_FIELDS if k in found)


def is_placeholder(text: str) -> bool:
    """True for an empty value or one standing for a removed value (see :data:`PLACEHOLDERS`)."""
    core = re.sub(r"[\s^=\x00]", "", text).upper()
    return not core or set(core) <= _MASK_CHARACTERS or core in PLACEHOLDERS


def _datasets(ds: Dataset) -> Iterator[Dataset]:
    """``ds`` and every sequence item below it, without recursion (depth is the file's choice)."""
    stack = [ds]
    while stack:
        item = stack.pop()
        yield item
        for tag in list(item.keys()):
            if tag.is_private or _vr(tag) != "SQ":
                continue
            try:
                stack.extend(item[tag].value or ())
            except Exception:  # an unparsable sequence is skipped, and never shown
                continue


def _vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _filled(item: Dataset, tag: BaseTag, keyword: str) -> bool:
    if _vr(tag) == "SQ":
        try:
            return len(item[tag].value or ()) > 0
        except Exception:  # unreadable: it cannot be shown to be empty
            return True
    try:
        texts = _texts(item.get_item(tag))
    except Exception:
        return True
    kept = [t.strip(" \x00") for t in texts if not is_placeholder(t)]
    return any(not _allowed(keyword, t) for t in kept)


def _allowed(keyword: str, text: str) -> bool:
    """A filled value that is still not identifying: a MIMIC pseudonym or shifted date."""
    pattern = PSEUDONYM_PATTERNS.get(keyword)
    if pattern is not None:
        return pattern.fullmatch(text) is not None
    if keyword in SHIFTED_DATE_FIELDS:
        year = text[:4]
        return year.isdigit() and int(year) >= SHIFTED_FROM_YEAR
    return False


def _texts(element: object) -> list[str]:
    """The element's values as text: raw bytes split on DICOM's value separator."""
    value = getattr(element, "value", None)
    if value is None:
        return []
    if isinstance(value, bytes):
        return value.decode("latin-1").split("\\")
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]
