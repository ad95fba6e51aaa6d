"""Identifying DICOM fields through ingest: planted in a synthetic release, they stop ingest under
``data.phi_policy=fail`` (names, never values, in the error) and never reach any output file or
log line under ``strip``."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pydicom
import pytest
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from components.heatmaps import run_heatmaps
from components.ingest import EGD_DIR, IMAGES_DIR, IngestResult, run_ingest
from components.ingest_checks import ValidationFailed
from components.ingest_suites import PHI_SUITE
from model_lib.data.fingerprint import tree_digest
from model_lib.presets import get_preset

pytestmark = pytest.mark.slow

PLANTED: dict[int, dict[str, object]] = {
    # master-sheet position -> fields written into that image's DICOM
    0: {"PatientName": "ZZPHI^PLANTED", "InstitutionName": "ZZPHI-HOSPITAL",
        "PatientBirthDate": "19010101"},
    5: {"OtherPatientIDs": "ZZPHI-77731", "PatientName": "ZZPHI^PLANTED^OTHER",
        "StudyDate": "19010101"},
    11: {"ReferringPhysicianName": "ZZPHI^DOCTOR", "PatientAge": "ZZPHI-AGE",
         "PatientID": "ZZPHI-MRN-1", "AccessionNumber": "ZZPHI-ACC-5"},
}  # fmt: skip
"""Values written into three DICOMs. PatientAge is not even a valid age string: a converted
value would make pydicom warn with the value in the message."""
MARKERS: tuple[bytes, ...] = (b"zzphi", b"19010101")
"""What no output may contain (compared lower-case): every planted value holds one of these."""


def plant_phi(raw: Path) -> dict[str, tuple[str, ...]]:
    """Write :data:`PLANTED` into a release's DICOMs; returns file (relative to the images
    root) -> the planted field names. The accession number goes inside a sequence item."""
    paths = pd.read_csv(raw / EGD_DIR / "master_sheet.csv")["path"]
    planted = {}
    for position, fields in PLANTED.items():
        relative = paths[position]
        path = raw / IMAGES_DIR / relative
        ds = pydicom.dcmread(path)
        with disable_value_validation():
            for keyword, value in fields.items():
                if keyword == "AccessionNumber":
                    item = Dataset()
                    item.AccessionNumber = value
                    ds.RequestAttributesSequence = Sequence([item])
                else:
                    setattr(ds, keyword, value)
            ds.save_as(path)
        planted[relative] = tuple(fields)
    return planted


def find_markers(root: Path) -> list[str]:
    """Every file under ``root`` holding a marker, as 'file: marker' (UTF-8 and UTF-16 bytes)."""
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes().lower()
        for marker in MARKERS:
            if marker in data or marker.decode().encode("utf-16-le") in data:
                hits.append(f"{path}: {marker.decode()}")
    return hits


@pytest.fixture(scope="module")
def raw(tiny_release: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("phi-release") / "raw"
    shutil.copytree(tiny_release, copy)
    return copy


@pytest.fixture(scope="module")
def planted(raw: Path) -> dict[str, tuple[str, ...]]:
    return plant_phi(raw)


def ingest(raw: Path, out: Path, policy: str) -> IngestResult:
    cfg = get_preset("ci", [f"data.phi_policy={policy}"]).data
    return run_ingest(raw / EGD_DIR, raw / IMAGES_DIR, out, cfg, progress=False)


@pytest.fixture(scope="module")
def debug_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every log record at DEBUG (pydicom's too) and every warning, into one file."""
    path = tmp_path_factory.mktemp("phi-log") / "debug.log"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root, pydicom_log = logging.getLogger(), logging.getLogger("pydicom")
    levels = root.level, pydicom_log.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    pydicom_log.setLevel(logging.DEBUG)
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()
        root.setLevel(levels[0])
        pydicom_log.setLevel(levels[1])


@pytest.fixture(scope="module")
def stripped(
    raw: Path, planted: dict, debug_log: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, IngestResult]:
    out = tmp_path_factory.mktemp("phi-out")
    result = ingest(raw, out / "store", "strip")
    run_heatmaps(result.store, out / "maps", get_preset("ci").data, progress=False)
    return out, result


def test_planted_values_are_in_the_release(raw: Path, planted: dict) -> None:
    """The search below finds them where they are: in the raw DICOMs."""
    hits = find_markers(raw / IMAGES_DIR)
    assert {Path(h.split(": ")[0]).relative_to(raw / IMAGES_DIR).as_posix() for h in hits} == set(
        planted
    )


def test_fail_names_files_and_fields_and_writes_no_store(
    raw: Path, planted: dict, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    with pytest.raises(ValidationFailed) as failed:
        ingest(raw, out, "fail")
    message = str(failed.value)
    assert not out.exists()
    assert "FAILED" in message and PHI_SUITE in message
    for file, fields in planted.items():
        assert file in message
        for field in fields:
            assert field in message
    assert b"zzphi" not in message.lower().encode() and "19010101" not in message
    # The report beside the missing store names the fields too, never the values.
    report = json.loads((tmp_path / "store.validation.json").read_text())
    checks = report["suites"][PHI_SUITE]["checks"]
    assert {c["columns"][0] for c in checks if not c["success"]} >= {"PatientName", "PatientID"}
    assert all(c["severity"] == "error" for c in checks)
    assert find_markers(tmp_path) == []


def test_strip_ingests_and_reports_counts_per_field(stripped, planted: dict) -> None:
    _, result = stripped
    assert sum(result.split_counts.values()) == 24
    report = json.loads(result.report_json.read_text())
    assert report["success"]
    checks = report["suites"][PHI_SUITE]["checks"]
    counts = {c["columns"][0]: c["unexpected_count"] for c in checks}
    expected = {"identifying_fields": len(planted)}
    for fields in planted.values():
        for field in fields:
            expected[field] = expected.get(field, 0) + 1
    assert counts == expected
    assert all(c["severity"] == "warning" and not c["success"] for c in checks)
    params = json.loads((result.store / "store.json").read_text())["params"]
    assert params["data"]["phi_policy"] == "strip"


def test_strip_leaks_nothing_into_outputs_or_logs(stripped, debug_log: Path) -> None:
    out, _ = stripped
    assert {p.name for p in out.iterdir()} == {"store", "maps"}
    assert find_markers(out) == []
    log = debug_log.read_text(encoding="utf-8")
    assert f"WARNING {PHI_SUITE}" in log and "PatientName" in log  # the warning, names only
    assert find_markers(debug_log.parent) == []


def test_fail_leaves_an_existing_store_untouched(stripped, raw: Path, tmp_path: Path) -> None:
    store = shutil.copytree(stripped[1].store, tmp_path / "store")
    before = tree_digest(store)
    with pytest.raises(ValidationFailed):
        ingest(raw, store, "fail")
    assert tree_digest(store) == before
