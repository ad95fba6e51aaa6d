"""Hostile inputs: every case of ``corpus/MANIFEST.json`` gives its clear error, never another
exception, and the ingest step leaves no output behind (nor touches an existing one).

Reader cases run on the corpus files directly. Ingest cases swap their file into a copy of the
synthetic release the corpus was derived from (links to the unchanged files), then run the whole
ingest step on it.
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_lib.data import dicom_io, egd_cxr
from model_lib.data.errors import DataError
from tests.hostile import build_corpus

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

CORPUS = build_corpus.CORPUS
MANIFEST = json.loads((CORPUS / build_corpus.MANIFEST).read_text(encoding="utf-8"))
MAX_MESSAGE_CHARS = 600
"""A clear DataError fits in a few lines, however large the bad value."""

READERS: dict[str, Callable[[Path], Any]] = {
    "read_dicom": dicom_io.read_dicom,
    "read_dicom_header": dicom_io.read_dicom_header,
    "read_image": dicom_io.read_image,
    "read_master_sheet": egd_cxr.read_master_sheet,
    "read_gaze_table": egd_cxr.read_gaze_table,
    "read_bounding_boxes": egd_cxr.read_bounding_boxes,
    "read_transcript": egd_cxr.read_transcript,
}


def _params(ingest: bool) -> list[Any]:
    params = []
    for case in MANIFEST["cases"]:
        if (case["target"] == "run_ingest") != ingest or case["expect"]["error"] == "none":
            continue
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if "xfail" in case else []
        params.append(pytest.param(case, id=case["id"], marks=marks))
    return params


def _raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:  # the check below says whether it is the right one
        return exc
    pytest.fail("the malformed input was accepted")


def check_error(exc: BaseException, case: dict[str, Any], file: Path) -> None:
    """The exception is the expected type, names ``file`` and says what the case expects."""
    expect = case["expect"]
    text = str(exc)
    assert type(exc).__name__ == expect["error"], f"{type(exc).__name__}: {text}"
    for part in expect["match"]:
        assert part in text, f"{part!r} not in {text!r}"
    if isinstance(exc, DataError):
        assert Path(exc.file) == file
        assert exc.field == expect.get("field")
        assert exc.row == expect.get("record")
        assert len(text) <= MAX_MESSAGE_CHARS, text


@pytest.mark.parametrize("case", _params(ingest=False))
def test_reader_gives_a_clear_error(case: dict[str, Any]) -> None:
    (rel,) = case["files"]
    path = CORPUS / rel
    check_error(_raised(lambda: READERS[case["target"]](path)), case, path)


def test_a_utf8_byte_order_mark_is_harmless() -> None:
    (case,) = [c for c in MANIFEST["cases"] if c["expect"]["error"] == "none"]
    read = READERS[case["target"]]
    (rel,) = case["files"]
    assert read(CORPUS / rel).equals(read(CORPUS / case["same_as"]))


# --- the whole ingest step --------------------------------------------------------------------


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic release the corpus was derived from (same generator arguments)."""
    return build_corpus.generate_release(tmp_path_factory.mktemp("hostile-release"))


def _linked_copy(src: Path, dst: Path) -> None:
    """``dst`` mirrors ``src``: real folders, symbolic links to the files."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True)
        else:
            target.symlink_to(path)


def release_with(release: Path, case: dict[str, Any], folder: Path) -> Path:
    """A copy of ``release`` in ``folder`` with the case's file in place; returns that file."""
    _linked_copy(release, folder)
    (rel,) = case["files"]
    replaces = case["replaces"]
    if replaces.startswith("image:"):
        record = int(replaces.removeprefix("image:"))
        master = egd_cxr.read_master_sheet(release / "egd-cxr" / "master_sheet.csv")
        original = folder / "mimic-cxr" / master.at[record, "path"]
        original.unlink()
        swapped = original.with_suffix(Path(rel).suffix)
    else:
        swapped = folder / replaces
        swapped.unlink()
    shutil.copyfile(CORPUS / rel, swapped)
    return swapped


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def data_config():
    from model_lib.presets import get_preset

    return get_preset("ci").data


@pytest.mark.slow
@pytest.mark.parametrize("case", _params(ingest=True))
def test_ingest_refuses_and_leaves_no_output(
    case: dict[str, Any], release: Path, tmp_path: Path, data_config
) -> None:
    from components.ingest import run_ingest

    raw = tmp_path / "raw"
    swapped = release_with(release, case, raw)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    out = out_parent / "store"

    def ingest() -> None:
        run_ingest(raw / "egd-cxr", raw / "mimic-cxr", out, data_config, workers=1,
                   progress=False)  # fmt: skip

    check_error(_raised(ingest), case, swapped)
    assert not out.exists()
    reports = {f"{out.name}.validation.json", f"{out.name}.validation.html"}
    assert {p.name for p in out_parent.iterdir()} <= reports  # no temporary store left

    # A store from an earlier run stays as it was, byte for byte.
    out.mkdir()
    (out / "store.json").write_text('{"format_version": 1}\n')
    (out / "train").mkdir()
    (out / "train" / "images.npy").write_bytes(bytes(range(256)))
    before = _snapshot(out)
    check_error(_raised(ingest), case, swapped)
    assert _snapshot(out) == before
    assert {p.name for p in out_parent.iterdir()} <= reports | {out.name}


# --- the corpus itself ------------------------------------------------------------------------


def test_corpus_is_what_build_corpus_writes(release: Path, tmp_path: Path) -> None:
    cases = build_corpus.build(tmp_path, release)
    assert len(cases) >= 25
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(str(p.relative_to(CORPUS)) for p in CORPUS.rglob("*") if p.is_file())
    rebuild = "rebuild it with `python -m tests.hostile.build_corpus`"
    assert written == committed, f"the corpus holds other files: {rebuild}"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, CORPUS, written, shallow=False)
    assert not mismatch and not errors, f"stale corpus files {mismatch + errors}: {rebuild}"
    size = sum((CORPUS / name).stat().st_size for name in committed)
    assert size < 300_000


def test_every_case_names_existing_files_and_a_known_entry_point() -> None:
    targets = {*READERS, "run_ingest"}
    for case in MANIFEST["cases"]:
        assert case["target"] in targets, case["id"]
        assert case["defect"] and case["expect"]["error"], case["id"]
        assert all((CORPUS / rel).is_file() for rel in case["files"]), case["id"]
        assert (case["target"] == "run_ingest") == ("replaces" in case), case["id"]
