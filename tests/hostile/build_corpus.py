"""Write the hostile-input corpus: ``tests/hostile/corpus/`` and its ``MANIFEST.json``.

Run ``python -m tests.hostile.build_corpus`` after changing a case; ``test_hostile_inputs.py``
checks that the committed files are exactly what this script writes, so the corpus cannot rot.

Each case is one or more small malformed files, the entry point it is fed to, what is wrong with
it, and the error expected: the exception type, substrings of the message (naming the file, and
the record or field) and, for DataError, the ``field``/``row`` attributes. Tables that are fed to
the whole ingest step are derived from a synthetic release (``RELEASE``) that the test generates
again and swaps the bad file into; everything else is built here from constants, so the bytes
depend on no encoder version (PNG data is stored uncompressed, the JPEG is a literal).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.charset import default_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian

CORPUS = Path(__file__).resolve().parent / "corpus"
MANIFEST = "MANIFEST.json"
RELEASE: dict[str, Any] = {"n_images": 24, "seed": 3, "scale": 0.1}
"""The synthetic release that ``run_ingest`` cases are swapped into (generate_dataset kwargs)."""

_DX = "1.2.840.10008.5.1.4.1.1.1.1"
_JPEG_2000 = "1.2.840.10008.1.2.4.90"
# A 16x16 grayscale baseline JPEG (a diagonal ramp), kept literal so no encoder version matters.
_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHRofHh0aHBwgJC4nICIsIxwc"
    "KDcpLDAxNDQ0Hyc5PTgyPC4zNDL/wAALCAAQABABAREA/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAECAwQFBgcICQoL/8QA"
    "tRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkKFhcYGRolJicoKSo0"
    "NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ipqrKztLW2"
    "t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/9oACAEBAAA/APN9H0f7vy16Bo+j/d+WjR9H"
    "+78tegaPo/3flr//2Q=="
)


class Corpus:
    """Collects files and cases while the builders run."""

    def __init__(self, out: Path, release: Path) -> None:
        self.out = out
        self.release = release
        self.cases: list[dict[str, Any]] = []

    def write(self, rel: str, data: bytes | str) -> str:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return rel

    def case(
        self,
        case_id: str,
        files: list[str],
        target: str,
        defect: str,
        error: str,
        match: list[str],
        **extra: Any,
    ) -> None:
        """One manifest entry; ``extra`` holds field/record/replaces/xfail when they apply."""
        expect = {"error": error, "match": match}
        for key in ("field", "record"):
            if key in extra:
                expect[key] = extra.pop(key)
        entry = {"id": case_id, "files": files, "target": target, "defect": defect}
        self.cases.append({**entry, "expect": expect, **extra})

    def data_error(
        self, case_id: str, rel: str, data: bytes | str, target: str, defect: str, **expect: Any
    ) -> None:
        """A one-file case whose DataError names the file (and ``field``/``record`` if given)."""
        self.write(rel, data)
        match = [Path(rel).name, *expect.pop("match", [])]
        if "field" in expect:
            match.append(f"field '{expect['field']}'")
        if "record" in expect:
            match.append(f"record {expect['record']}")
        self.case(case_id, [rel], target, defect, "DataError", match, **expect)


# --- DICOM ------------------------------------------------------------------------------------


def dicom(rows: int = 8, cols: int = 6, **fields: Any) -> Dataset:
    """A small valid DX image (16-bit, 12 stored); ``fields`` set (or, with None, delete) more."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _DX
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "2.25.2"  # fixed, so the bytes do not follow pydicom's version
    meta.ImplementationVersionName = "HOSTILE_CORPUS"
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _DX
    ds.SOPInstanceUID = "2.25.1"
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(rows * cols, dtype="<u2") * 97 % 4096).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    for name, value in fields.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    return ds


def raw_element(ds: Dataset, tag: int, vr: str, value: bytes) -> Dataset:
    """Put ``value`` bytes under ``tag`` as is: how a file with an invalid value is written."""
    if len(value) % 2:
        value += b" "
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    # Declared as read in the encoding it is written in, so writing copies raw values as they are
    # instead of converting them (an IS of 'inf' would not convert).
    ds.set_original_encoding(False, True, default_encoding)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pixel_data_offset(data: bytes) -> int:
    """Offset of the (7FE0,0010) OW element header in an explicit-VR little-endian file."""
    offset = data.rfind(b"\xe0\x7f\x10\x00OW")
    assert offset > 0, "no PixelData element"
    return offset


def add_dicom_cases(c: Corpus) -> None:
    read_dicom, read_header = "read_dicom", "read_dicom_header"
    good = to_bytes(dicom())
    pixels = _pixel_data_offset(good)
    rows_at = good.find(b"\x28\x00\x10\x00US")
    c.data_error("dicom_garbage", "dicom/garbage.dcm", bytes(range(256)) * 2, read_dicom,
                 "512 bytes that are not DICOM, with a .dcm name",
                 match=["not a DICOM file"])  # fmt: skip
    c.data_error("dicom_empty", "dicom/empty.dcm", b"", read_dicom, "a 0-byte .dcm file",
                 match=["not a DICOM file"])  # fmt: skip
    c.data_error("dicom_truncated_in_header", "dicom/truncated_in_header.dcm", good[:rows_at],
                 read_header, "cut just before (0028,0010) Rows: the header ends early",
                 field="Rows", match=["absent"])  # fmt: skip
    c.data_error("dicom_truncated_in_pixels", "dicom/truncated_in_pixels.dcm", good[:-40],
                 read_dicom, "cut 40 bytes before the end of PixelData", field="PixelData",
                 match=["less than expected"])  # fmt: skip
    c.data_error("dicom_pixel_length_past_eof", "dicom/pixel_length_past_eof.dcm",
                 good[: pixels + 8] + struct.pack("<I", 0xFFFFFFF0) + good[pixels + 12 : -56],
                 read_dicom, "PixelData declares 4 GiB; the file ends 40 bytes into it",
                 field="PixelData", match=["less than expected"])  # fmt: skip
    rows_lo = raw_element(dicom(), 0x00280010, "LO", b"eight")
    c.data_error("dicom_rows_wrong_vr", "dicom/rows_wrong_vr.dcm", to_bytes(rows_lo), read_header,
                 "Rows written with VR LO and the text 'eight'", field="Rows",
                 match=["unreadable value", "eight"])  # fmt: skip
    width_lo = raw_element(dicom(WindowCenter="100"), 0x00281051, "LO", b"wide")
    c.data_error("dicom_window_width_wrong_vr", "dicom/window_width_wrong_vr.dcm",
                 to_bytes(width_lo), read_header, "WindowWidth written with VR LO: 'wide'",
                 field="WindowWidth", match=["unreadable value", "wide"])  # fmt: skip
    width_sq = dicom(WindowCenter="100")
    width_sq.add_new(0x00281051, "SQ", [])
    c.data_error("dicom_window_width_sequence", "dicom/window_width_sequence.dcm",
                 to_bytes(width_sq), read_dicom, "WindowWidth written as an empty sequence (SQ)",
                 field="WindowWidth", match=["unreadable value"])  # fmt: skip
    c.data_error("dicom_rows_zero", "dicom/rows_zero.dcm", to_bytes(dicom(Rows=0, PixelData=b"")),
                 read_dicom, "Rows = 0 and no pixels", field="Rows",
                 match=["0 is outside 1..10000"])  # fmt: skip
    c.data_error("dicom_huge_dimensions", "dicom/huge_dimensions.dcm",
                 to_bytes(dicom(Rows=65535, Columns=65535)), read_dicom,
                 "Rows = Columns = 65535 (an 8 GiB image) over 96 bytes of pixels", field="Rows",
                 match=["65535 is outside 1..10000"])  # fmt: skip
    negative = dicom()
    del negative.Rows
    negative.add_new(0x00280010, "SS", -8)
    c.data_error("dicom_negative_rows", "dicom/negative_rows.dcm", to_bytes(negative), read_dicom,
                 "Rows written as signed (SS) -8", field="Rows",
                 match=["-8 is outside 1..10000"])  # fmt: skip
    c.data_error("dicom_negative_window_width", "dicom/negative_window_width.dcm",
                 to_bytes(dicom(WindowCenter="100", WindowWidth="-50")), read_dicom,
                 "WindowWidth = -50", field="WindowWidth",
                 match=["must be positive"])  # fmt: skip
    nan_centre = raw_element(dicom(WindowWidth="100"), 0x00281050, "DS", b"NaN")
    c.data_error("dicom_nan_window_center", "dicom/nan_window_center.dcm", to_bytes(nan_centre),
                 read_dicom, "WindowCenter = 'NaN'", field="WindowCenter",
                 match=["not a finite number"])  # fmt: skip
    inf_slope = raw_element(dicom(), 0x00281053, "DS", b"inf")
    c.data_error("dicom_inf_rescale_slope", "dicom/inf_rescale_slope.dcm", to_bytes(inf_slope),
                 read_dicom, "RescaleSlope = 'inf'", field="RescaleSlope",
                 match=["not a finite number"])  # fmt: skip
    c.data_error("dicom_zero_rescale_slope", "dicom/zero_rescale_slope.dcm",
                 to_bytes(dicom(RescaleSlope="0")), read_dicom, "RescaleSlope = 0",
                 field="RescaleSlope", match=["zero slope"])  # fmt: skip
    frames = dicom(NumberOfFrames=2)
    frames.PixelData = frames.PixelData * 2
    c.data_error("dicom_multiframe", "dicom/multiframe.dcm", to_bytes(frames), read_dicom,
                 "two frames (NumberOfFrames = 2)", field="NumberOfFrames",
                 match=["2 frames; expected 1"])  # fmt: skip
    rgb = dicom(SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
                BitsAllocated=8, BitsStored=8, HighBit=7, PixelData=bytes(8 * 6 * 3))  # fmt: skip
    c.data_error("dicom_rgb", "dicom/rgb.dcm", to_bytes(rgb), read_dicom,
                 "an RGB image (3 samples per pixel)", field="SamplesPerPixel",
                 match=["3 samples per pixel"])  # fmt: skip
    c.data_error("dicom_palette_color", "dicom/palette_color.dcm",
                 to_bytes(dicom(PhotometricInterpretation="PALETTE COLOR")), read_dicom,
                 "PhotometricInterpretation PALETTE COLOR", field="PhotometricInterpretation",
                 match=["PALETTE COLOR"])  # fmt: skip
    c.data_error("dicom_missing_pixel_data", "dicom/missing_pixel_data.dcm",
                 to_bytes(dicom(PixelData=None)), read_dicom, "a header without PixelData",
                 field="PixelData", match=["no pixel data"])  # fmt: skip
    short = dicom()
    short.PixelData = short.PixelData[:20]
    c.data_error("dicom_short_pixel_data", "dicom/short_pixel_data.dcm", to_bytes(short),
                 read_dicom, "20 bytes of pixels for 8 x 6 16-bit pixels (96 bytes)",
                 field="PixelData", match=["20 vs 96 bytes"])  # fmt: skip
    c.data_error("dicom_bits_allocated_12", "dicom/bits_allocated_12.dcm",
                 to_bytes(dicom(BitsAllocated=12)), read_dicom,
                 "BitsAllocated = 12 (must be 1 or a multiple of 8)", field="PixelData",
                 match=["Bits Allocated"])  # fmt: skip
    # pydicom converts values lazily and raises more than ValueError/TypeError while doing so.
    rows_inf = raw_element(dicom(), 0x00280010, "IS", b"inf")
    c.data_error("dicom_rows_is_inf", "dicom/rows_is_inf.dcm", to_bytes(rows_inf), read_header,
                 "Rows written as IS 'inf' (int() of infinity overflows)", field="Rows",
                 match=["unreadable value"])  # fmt: skip
    frames_inf = raw_element(dicom(), 0x00280008, "IS", b"inf")
    c.data_error("dicom_frames_is_inf", "dicom/frames_is_inf.dcm", to_bytes(frames_inf),
                 read_dicom, "NumberOfFrames = 'inf'", field="NumberOfFrames",
                 match=["NumberOfFrames"])  # fmt: skip
    bits_at = good.find(b"\x28\x00\x00\x01US")
    c.data_error("dicom_unknown_vr", "dicom/unknown_vr.dcm",
                 good[: bits_at + 4] + b"ZZ" + good[bits_at + 6 :], read_header,
                 "BitsAllocated with the VR bytes 'ZZ' (one flipped byte pair)",
                 field="BitsAllocated", match=["unreadable value"])  # fmt: skip
    c.data_error("dicom_odd_length_rows", "dicom/odd_length_rows.dcm",
                 good[: rows_at + 6] + b"\x01\x00\x08" + good[rows_at + 10 :], read_header,
                 "Rows (US, 2 bytes a value) with a 1-byte value", field="Rows",
                 match=["unreadable value"])  # fmt: skip
    compressed = dicom()
    compressed.file_meta.TransferSyntaxUID = _JPEG_2000
    compressed.PixelData = encapsulate([b"\xff\x4f\xff\x51 not a codestream"])
    compressed["PixelData"].VR = "OB"
    c.data_error("dicom_compressed_garbage", "dicom/compressed_garbage.dcm", to_bytes(compressed),
                 read_dicom, "JPEG 2000 transfer syntax over a fragment that is not a codestream",
                 field="PixelData", match=["cannot decode pixel data"])  # fmt: skip


# --- JPEG / PNG -------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stored_zlib(data: bytes) -> bytes:
    """A zlib stream of stored (uncompressed) blocks: the same bytes with any zlib build."""
    assert len(data) < 0xFFFF
    block = b"\x01" + struct.pack("<HH", len(data), 0xFFFF ^ len(data)) + data
    return b"\x78\x01" + block + struct.pack(">I", zlib.adler32(data))


def png(width: int, height: int, color_type: int = 0, pixels: bytes | None = None) -> bytes:
    """An 8-bit PNG (grey, or RGB with color_type 2); pixels default to a ramp."""
    channels = 3 if color_type == 2 else 1
    if pixels is None:
        pixels = b"".join(
            b"\x00" + bytes((x + y) * 8 % 256 for x in range(width * channels))
            for y in range(height)
        )
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", _stored_zlib(pixels)) + _png_chunk(b"IEND", b""))  # fmt: skip


def add_raster_cases(c: Corpus) -> None:
    read_image = "read_image"
    good_png = png(16, 16)
    c.data_error("png_empty", "raster/empty.png", b"", read_image, "a 0-byte .png file",
                 match=["cannot decode image"])  # fmt: skip
    c.data_error("jpeg_empty", "raster/empty.jpg", b"", read_image, "a 0-byte .jpg file",
                 match=["cannot decode image"])  # fmt: skip
    c.data_error("png_truncated", "raster/truncated.png", good_png[: len(good_png) // 2],
                 read_image, "the first half of a 16 x 16 PNG",
                 match=["cannot decode image", "truncated"])  # fmt: skip
    c.data_error("jpeg_truncated", "raster/truncated.jpg", _JPEG[: len(_JPEG) * 3 // 4],
                 read_image, "the first three quarters of a 16 x 16 JPEG",
                 match=["cannot decode image", "truncated"])  # fmt: skip
    c.data_error("png_rgb", "raster/rgb.png", png(4, 4, color_type=2), read_image,
                 "an RGB PNG where grayscale is expected", field="mode",
                 match=["'RGB'"])  # fmt: skip
    c.data_error("png_huge_dimensions", "raster/huge_dimensions.png",
                 png(65535, 65535, pixels=b"\x00" * 16), read_image,
                 "IHDR claims 65535 x 65535 over 16 bytes of data",
                 match=["exceeds limit"])  # fmt: skip
    c.data_error("png_too_wide", "raster/too_wide.png", png(20000, 1, pixels=b"\x00" * 16),
                 read_image, "IHDR claims 20000 x 1: wider than any X-ray",
                 field="Columns", match=["20000 is outside 1..10000"])  # fmt: skip
    short_ihdr = good_png[:8] + struct.pack(">I", 12) + good_png[12:]
    c.data_error("png_short_ihdr", "raster/short_ihdr.png", short_ihdr, read_image,
                 "the IHDR chunk declares 12 bytes instead of 13",
                 match=["cannot decode image"])  # fmt: skip
    c.data_error("raster_unknown_suffix", "raster/image.bmp", good_png, read_image,
                 "an image with a suffix the readers do not know",
                 match=["unsupported image suffix '.bmp'"])  # fmt: skip


# --- CSV tables -------------------------------------------------------------------------------


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def with_cell(rows: list[list[str]], record: int, column: str, value: str) -> list[list[str]]:
    """A copy of ``rows`` (header first) with one cell of a 1-based record replaced."""
    rows = [list(r) for r in rows]
    rows[record][rows[0].index(column)] = value
    return rows


def add_csv_cases(c: Corpus) -> None:
    master = read_rows(c.release / "egd-cxr" / "master_sheet.csv")[:3]
    fixations = read_rows(c.release / "egd-cxr" / "fixations.csv")[:4]
    boxes = read_rows(c.release / "egd-cxr" / "bounding_boxes.csv")[:3]
    master_text = csv_text(master)
    m, g, b = "read_master_sheet", "read_gaze_table", "read_bounding_boxes"
    dicom_id = master[1][0]

    c.data_error("master_empty", "csv/master_sheet.empty.csv", b"", m, "a 0-byte table",
                 match=["file is empty"])  # fmt: skip
    c.data_error("master_blank_lines", "csv/master_sheet.blank_lines.csv", "\n \n\n", m,
                 "only blank lines", match=["no header line"])  # fmt: skip
    c.data_error("master_header_only", "csv/master_sheet.header_only.csv", csv_text(master[:1]),
                 m, "the header line and no record", match=["no records"])  # fmt: skip
    lines = master_text.split("\n")
    lines[1] = lines[1].replace(",", ',"', 1)  # pairs with the next quote, many fields later
    c.data_error("master_stray_quote", "csv/master_sheet.stray_quote.csv", "\n".join(lines), m,
                 "a stray quote in record 1 swallows fields up to the next quote",
                 record=1, field="study_id", match=["not a number"])  # fmt: skip
    c.data_error("master_unclosed_quote", "csv/master_sheet.unclosed_quote.csv",
                 master_text + '"' + master_text.split("\n")[1], m,
                 "a last record whose first field opens a quote that never closes",
                 match=["malformed CSV", "EOF inside string"])  # fmt: skip
    c.data_error("master_semicolons", "csv/master_sheet.semicolons.csv", csv_text(master, ";"),
                 m, "fields separated by ';' (a European spreadsheet export)",
                 match=["split by ';'"])  # fmt: skip
    latin1 = with_cell(master, 2, "cxr_exam_indication", "fi\xe8vre ___")
    c.data_error("master_latin1", "csv/master_sheet.latin1.csv",
                 csv_text(latin1).encode("latin-1"), m,
                 "Latin-1 text: byte 0xe8 in record 2's indication", match=["not UTF-8 text",
                 "0xe8"])  # fmt: skip
    c.data_error("master_utf16", "csv/master_sheet.utf16.csv", master_text.encode("utf-16"), m,
                 "UTF-16 with a byte-order mark (Excel 'Unicode text')",
                 match=["UTF-16"])  # fmt: skip
    c.data_error("master_nul_bytes", "csv/master_sheet.nul.csv",
                 csv_text(with_cell(master, 1, "gender", "F\x00\x00")), m,
                 "NUL bytes inside record 1 (a file padded by a crashed copy)",
                 match=["NUL byte on line 2"])  # fmt: skip
    bom = "\ufeff" + master_text
    c.write("csv/master_sheet.utf8_bom.csv", bom)
    c.write("csv/master_sheet.good.csv", master_text)
    c.case("master_utf8_bom", ["csv/master_sheet.utf8_bom.csv"], m,
           "a UTF-8 byte-order mark before the header (Excel 'CSV UTF-8'): harmless, accepted",
           "none", [], same_as="csv/master_sheet.good.csv")  # fmt: skip
    c.data_error("master_overlong_id", "csv/master_sheet.overlong_id.csv",
                 csv_text(with_cell(master, 2, "dicom_id", "a" * 5000)), m,
                 "a 5,000-character dicom_id", record=2, field="dicom_id",
                 match=["5,000 bytes long"])  # fmt: skip
    c.data_error("master_id_traversal", "csv/master_sheet.id_traversal.csv",
                 csv_text(with_cell(master, 1, "dicom_id", f"../../{dicom_id}")), m,
                 "dicom_id '../../<id>': names a folder outside the transcripts root",
                 record=1, field="dicom_id", match=["holds '/'"])  # fmt: skip
    c.data_error("master_id_dotdot", "csv/master_sheet.id_dotdot.csv",
                 csv_text(with_cell(master, 2, "dicom_id", "..")), m,
                 "dicom_id '..': the parent folder", record=2, field="dicom_id",
                 match=["'..' is not a file name"])  # fmt: skip
    c.data_error("master_id_backslash", "csv/master_sheet.id_backslash.csv",
                 csv_text(with_cell(master, 1, "dicom_id", f"..\\{dicom_id}")), m,
                 "dicom_id with a Windows path separator", record=1, field="dicom_id",
                 match=["holds '\\\\'"])  # fmt: skip
    c.data_error("master_path_traversal", "csv/master_sheet.path_traversal.csv",
                 csv_text(with_cell(master, 1, "path", "files/p10/../../../../etc/passwd")), m,
                 "path climbing out of the images root with '..'", record=1, field="path",
                 match=["leaves the images root"])  # fmt: skip
    c.data_error("master_path_absolute", "csv/master_sheet.path_absolute.csv",
                 csv_text(with_cell(master, 2, "path", f"/etc/{dicom_id}.dcm")), m,
                 "an absolute path", record=2, field="path",
                 match=["leaves the images root"])  # fmt: skip
    c.data_error("master_integer_overflow", "csv/master_sheet.integer_overflow.csv",
                 csv_text(with_cell(master, 2, "patient_id", "9" * 25)), m,
                 "a 25-digit patient_id (int64 would wrap it silently)", record=2,
                 field="patient_id", match=["integer out of range"])  # fmt: skip
    c.data_error("master_inf_label", "csv/master_sheet.inf_label.csv",
                 csv_text(with_cell(master, 1, "edema__chx", "-inf")), m,
                 "-inf in a CheXpert label column", record=1, field="edema__chx",
                 match=["not a finite number"])  # fmt: skip
    c.data_error("master_missing_column", "csv/master_sheet.missing_column.csv",
                 csv_text([r[:5] + r[6:] for r in master]), m, "the gender column left out",
                 field="gender", match=["missing column"])  # fmt: skip
    renamed = [list(r) for r in master]
    renamed[0][5] = "sex"
    c.data_error("master_renamed_column", "csv/master_sheet.renamed_column.csv",
                 csv_text(renamed), m, "gender renamed 'sex'", field="gender",
                 match=["missing column", "unexpected instead: 'sex'"])  # fmt: skip

    c.data_error("gaze_header_only", "csv/fixations.header_only.csv", csv_text(fixations[:1]), g,
                 "the 37-column header and no record", match=["no records"])  # fmt: skip
    c.data_error("gaze_tabs", "csv/fixations.tabs.csv", csv_text(fixations, "\t"), g,
                 "tab-separated instead of comma-separated", match=["split by '\\t'"])  # fmt: skip
    c.data_error("gaze_inf_coordinate", "csv/fixations.inf_coordinate.csv",
                 csv_text(with_cell(fixations, 2, "FPOGX", "inf")), g, "FPOGX = inf in record 2",
                 record=2, field="FPOGX", match=["not a finite number"])  # fmt: skip
    c.data_error("gaze_overflow_time", "csv/fixations.overflow_time.csv",
                 csv_text(with_cell(fixations, 3, "Time (in secs)", "1e999")), g,
                 "a timestamp that overflows float64 (1e999)", record=3,
                 field="Time (in secs)", match=["not a finite number"])  # fmt: skip
    c.data_error("gaze_overlong_id", "csv/fixations.overlong_id.csv",
                 csv_text(with_cell(fixations, 1, "DICOM_ID", "f" * 5000)), g,
                 "a 5,000-character DICOM_ID", record=1, field="DICOM_ID",
                 match=["5,000 bytes long"])  # fmt: skip
    c.data_error("gaze_id_traversal", "csv/fixations.id_traversal.csv",
                 csv_text(with_cell(fixations, 3, "DICOM_ID", "../" + fixations[3][2])), g,
                 "DICOM_ID with '../'", record=3, field="DICOM_ID",
                 match=["holds '/'"])  # fmt: skip
    extra = csv_text(fixations).split("\n")
    extra[2] += ",0.5"
    c.data_error("gaze_extra_field", "csv/fixations.extra_field.csv", "\n".join(extra), g,
                 "record 2 has 38 fields under a 37-column header",
                 match=["malformed CSV", "Expected 37 fields in line 3, saw 38"])  # fmt: skip
    c.data_error("gaze_text_in_number", "csv/fixations.text_in_number.csv",
                 csv_text(with_cell(fixations, 1, "CNT", "12 records")), g,
                 "text in the numeric CNT column", record=1, field="CNT",
                 match=["not a number: '12 records'"])  # fmt: skip

    c.data_error("boxes_nan_text", "csv/bounding_boxes.nan_text.csv",
                 csv_text(with_cell(boxes, 2, "x2", "NaN")), b, "'NaN' written for a coordinate",
                 record=2, field="x2", match=["not a number: 'NaN'"])  # fmt: skip
    box_lines = csv_text(boxes).split("\n")
    box_lines[2] = box_lines[2].replace(",", ',"', 1)
    c.data_error("boxes_unbalanced_quote", "csv/bounding_boxes.unbalanced_quote.csv",
                 "\n".join(box_lines), b, "a quote opened in record 2 and never closed",
                 match=["malformed CSV", "EOF inside string"])  # fmt: skip


def add_transcript_cases(c: Corpus) -> None:
    t = "read_transcript"
    c.data_error("transcript_deep_nesting", "json/deep_nesting.transcript.json",
                 '{"full_text": ' + "[" * 3000 + "]" * 3000 + "}", t,
                 "3,000 nested arrays (Python's json recurses per level)",
                 match=["nested too deeply"])  # fmt: skip
    nan_time = '{"full_text": "clear", "time_stamped_text": ' \
               '[{"phrase": "clear", "begin_time": NaN, "end_time": 1.0}]}'  # fmt: skip
    c.data_error("transcript_nan_time", "json/nan_time.transcript.json", nan_time, t,
                 "JSON's non-standard NaN literal as a phrase time", record=1,
                 field="begin_time", match=["not a finite time"])  # fmt: skip
    c.data_error("transcript_not_utf8", "json/not_utf8.transcript.json",
                 b'{"full_text": "\xff\xfe", "time_stamped_text": []}', t,
                 "bytes that are not UTF-8", match=["not valid JSON", "utf-8"])  # fmt: skip


# --- the whole ingest step --------------------------------------------------------------------


def _validation(suite: str, expectation: str, column: str) -> list[str]:
    """What ValidationFailed says when exactly one check of the release fails."""
    return ["EGD-CXR validation FAILED: 1 error(s)", f"{suite}: {expectation}({column})"]


def _one_per_screen(rows: list[list[str]]) -> list[list[str]]:
    """The first row of each (SESSION_ID, DICOM_ID) screen: a small, still valid fixations.csv."""
    seen, kept = set(), [rows[0]]
    for row in rows[1:]:
        if (row[0], row[2]) not in seen:
            seen.add((row[0], row[2]))
            kept.append(row)
    return kept


def add_ingest_cases(c: Corpus) -> None:
    """Cases fed to run_ingest: the file replaces ``replaces`` in a copy of the RELEASE."""
    egd = c.release / "egd-cxr"
    master = read_rows(egd / "master_sheet.csv")
    fixations = _one_per_screen(read_rows(egd / "fixations.csv"))
    image_rows = [k for k, row in enumerate(fixations) if k and len(row[2]) == 44]
    ms, fx, ing = "egd-cxr/master_sheet.csv", "egd-cxr/fixations.csv", "run_ingest"

    def ingest(case_id: str, rel: str, data: bytes | str, replaces: str, defect: str,
               error: str, match: list[str], **extra: Any) -> None:  # fmt: skip
        c.write(rel, data)
        c.case(case_id, [rel], ing, defect, error, match, replaces=replaces, **extra)

    duplicated = [*master, master[2]]
    ingest(
        "ingest_duplicate_id",
        "ingest/master_sheet.duplicate_id.csv",
        csv_text(duplicated),
        ms,
        "record 2 repeated as record 25: a duplicated dicom_id",
        "ValidationFailed",
        ["master_sheet.csv: expect_column_values_to_be_unique(dicom_id)", "records [2, 25]"],
    )
    traversal = with_cell(master, 3, "dicom_id", "../" + master[3][0])
    ingest("ingest_id_traversal", "ingest/master_sheet.id_traversal.csv", csv_text(traversal),
           ms, "record 3's dicom_id starts with '../'", "DataError",
           ["master_sheet.csv", "record 3", "field 'dicom_id'", "holds '/'"],
           record=3, field="dicom_id")  # fmt: skip
    nan_x = with_cell(fixations, image_rows[4], "FPOGX", "")
    ingest(
        "ingest_nan_gaze",
        "ingest/fixations.nan_gaze.csv",
        csv_text(nan_x),
        fx,
        "an empty (NaN) FPOGX in one fixation",
        "ValidationFailed",
        _validation("fixations.csv", "expect_column_values_to_not_be_null", "FPOGX"),
    )
    k = image_rows[6]
    negative = with_cell(fixations, k, "FPOGD", "-" + fixations[k][9])
    moved = float(fixations[k][8]) + 2 * float(fixations[k][9])
    negative = with_cell(negative, k, "FPOGS", repr(moved))
    ingest(
        "ingest_negative_duration",
        "ingest/fixations.negative_duration.csv",
        csv_text(negative),
        fx,
        "a negative fixation duration (FPOGS moved so that Time = FPOGS + FPOGD still holds)",
        "ValidationFailed",
        _validation("fixations.csv", "expect_column_values_to_be_between", "FPOGD"),
    )
    k = image_rows[2]
    shift = float(fixations[k][4]) + 5.0  # the first row of an image: no order check applies
    early = with_cell(fixations, k, "Time (in secs)", repr(float(fixations[k][4]) - shift))
    early = with_cell(early, k, "FPOGS", repr(float(fixations[k][8]) - shift))
    ingest(
        "ingest_negative_time",
        "ingest/fixations.negative_time.csv",
        csv_text(early),
        fx,
        "a negative timestamp (-5 s) on an image's first fixation",
        "ValidationFailed",
        ["fixations.csv: expect_column_values_to_be_between(Time (in secs))"],
    )
    ingest(
        "ingest_empty_eye_gaze",
        "ingest/eye_gaze.empty.csv",
        b"",
        "egd-cxr/eye_gaze.csv",
        "eye_gaze.csv is a 0-byte file",
        "DataError",
        ["eye_gaze.csv", "file is empty"],
    )
    ingest("ingest_garbage_dicom", "ingest/garbage.dcm", bytes(range(256)) * 2, "image:1",
           "record 1's DICOM replaced by 512 bytes of garbage", "DataError",
           ["not a DICOM file"])  # fmt: skip
    image = pydicom.dcmread(c.release / "mimic-cxr" / master[1][1])
    image.PixelData = image.PixelData[:64]
    ingest("ingest_short_pixel_data", "ingest/short_pixel_data.dcm", to_bytes(image), "image:1",
           "record 1's DICOM with its header intact and 64 bytes of pixels: validation passes "
           "and decoding fails while the store is being written", "DataError",
           ["field 'PixelData'", "less than expected"],
           field="PixelData")  # fmt: skip
    ingest("ingest_empty_jpeg", "ingest/empty.jpg", b"", "image:1",
           "record 1's image is a 0-byte .jpg (a MIMIC-CXR-JPG image)", "DataError",
           ["cannot decode image"])  # fmt: skip


BUILDERS: tuple[Callable[[Corpus], None], ...] = (
    add_dicom_cases,
    add_raster_cases,
    add_csv_cases,
    add_transcript_cases,
    add_ingest_cases,
)


def build(out: Path, release: Path) -> list[dict[str, Any]]:
    """Write every corpus file and MANIFEST.json under ``out`` (an empty folder)."""
    corpus = Corpus(out, release)
    for builder in BUILDERS:
        builder(corpus)
    ids = [case["id"] for case in corpus.cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    manifest = {
        "about": "Malformed inputs and the clear error each must give; "
        "written by tests/hostile/build_corpus.py, checked by test_hostile_inputs.py.",
        "release": RELEASE,
        "cases": corpus.cases,
    }
    corpus.write(MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")
    return corpus.cases


def generate_release(folder: Path) -> Path:
    """The synthetic release the ingest cases come from and go back into."""
    from model_lib.data.synth import generate_dataset

    raw = folder / "raw"
    generate_dataset(raw, **RELEASE)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=CORPUS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-corpus-") as tmp:
        release = generate_release(Path(tmp))
        staged = Path(tmp) / "corpus"
        cases = build(staged, release)
        if args.out.exists():
            shutil.rmtree(args.out)
        shutil.copytree(staged, args.out)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {len(cases)} cases, {size:,} bytes, to {args.out}")


if __name__ == "__main__":
    main()
