from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from model_lib.data.dicom_io import (
    HEADER_FIELDS,
    read_dicom,
    read_dicom_header,
    read_image,
    read_jpeg,
)
from model_lib.data.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")

SHAPE = (61, 50)


def write_dicom(path: Path, stored: np.ndarray, **fields: Any) -> Path:
    """A minimal DX DICOM holding ``stored`` (H, W[, samples]); ``fields`` override or add
    elements (a value of None deletes the element). Identifying fields are filled on purpose."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.ViewPosition = "PA"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "12345678"
    ds.StudyDate = "21800101"
    ds.InstitutionName = "Somewhere General"
    ds.Rows, ds.Columns = stored.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = 12 if stored.dtype.itemsize == 2 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    ds.PixelData = stored.tobytes()
    for name, value in fields.items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(shape: tuple[int, int] = SHAPE, top: int = 4095) -> np.ndarray:
    """Stored values 0..top along the flattened image, uint16."""
    return np.linspace(0, top, shape[0] * shape[1]).round().astype(np.uint16).reshape(shape)


def test_window_maps_centre_and_width_to_unit_range(tmp_path: Path) -> None:
    stored = np.array([[0, 50, 100], [150, 200, 75]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, WindowCenter=100, WindowWidth=100)
    img = read_dicom(path)
    expected = np.array([[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.pixels.dtype == np.float32 and img.native_hw == (2, 3)


def test_window_low_end_is_clamped_at_zero(tmp_path: Path) -> None:
    # centre 20, width 100: the window is [max(0, -30), 70] = [0, 70].
    stored = np.array([[0, 35, 70, 100]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored, WindowCenter=20, WindowWidth=100)
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_multi_valued_window_uses_the_first_value(tmp_path: Path) -> None:
    stored = np.array([[50, 100, 150]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "a.dcm", stored, WindowCenter="100\\900", WindowWidth=[100.0, 10.0]
    )
    assert read_dicom_header(path)["WindowCenter"] == 100.0
    assert read_dicom_header(path)["WindowWidth"] == 100.0
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 0.5, 1.0]], atol=1e-6)


def test_rescale_applies_before_the_window(tmp_path: Path) -> None:
    stored = np.array([[50, 100, 150]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "a.dcm",
        stored,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=100,
        WindowWidth=200,
    )
    # rescaled 0, 100, 200 in the window [0, 200]
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 0.5, 1.0]], atol=1e-6)


def test_without_window_min_max(tmp_path: Path) -> None:
    stored = np.array([[10, 60, 110]], dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", stored)
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 0.5, 1.0]], atol=1e-6)


def test_monochrome1_is_inverted_after_windowing(tmp_path: Path) -> None:
    stored = ramp()
    plain = write_dicom(tmp_path / "m2.dcm", stored, WindowCenter=2000, WindowWidth=3000)
    inverse = write_dicom(
        tmp_path / "m1.dcm",
        stored,
        WindowCenter=2000,
        WindowWidth=3000,
        PhotometricInterpretation="MONOCHROME1",
    )
    a, b = read_dicom(plain).pixels, read_dicom(inverse).pixels
    np.testing.assert_allclose(b, 1.0 - a, atol=1e-6)
    assert a[0, 0] == 0.0 and b[0, 0] == 1.0  # dense tissue is bright either way


def test_unused_high_bits_are_ignored_like_pydicom(tmp_path: Path) -> None:
    clean = ramp()
    dirty = clean | np.uint16(0xF000)  # garbage above the 12 stored bits
    path_clean = write_dicom(tmp_path / "clean.dcm", clean)
    path_dirty = write_dicom(tmp_path / "dirty.dcm", dirty)
    assert (pydicom.dcmread(path_dirty).pixel_array == clean).all()
    np.testing.assert_array_equal(read_dicom(path_dirty).pixels, read_dicom(path_clean).pixels)


def test_signed_stored_values_are_sign_extended(tmp_path: Path) -> None:
    values = np.array([[-100, 0, 100]], dtype=np.int16)
    twelve_bit = (values.view(np.uint16) & np.uint16(0x0FFF)).view(np.int16)  # -100 -> 3996
    path = write_dicom(tmp_path / "s.dcm", twelve_bit, WindowCenter=0, WindowWidth=200)
    assert (pydicom.dcmread(path).pixel_array == values).all()
    # window [max(0, -100), 100] = [0, 100]
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 0.0, 1.0]], atol=1e-6)


def test_eight_bit_pixels(tmp_path: Path) -> None:
    stored = np.array([[0, 128, 255]], dtype=np.uint8)
    path = write_dicom(tmp_path / "a.dcm", stored, BitsStored=8, HighBit=7)
    np.testing.assert_allclose(read_dicom(path).pixels, [[0.0, 128 / 255, 1.0]], atol=1e-6)


def test_header_is_the_whitelist_only(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "a.dcm",
        ramp(),
        WindowCenter=2048,
        WindowWidth=4096,
        PixelSpacing=[0.139, 0.14],
        RescaleSlope=1,
        RescaleIntercept=0,
    )
    header = read_dicom_header(path)
    assert tuple(header) == HEADER_FIELDS
    assert header["Rows"] == 61 and header["Columns"] == 50
    assert header["BitsStored"] == 12 and header["BitsAllocated"] == 16
    assert header["PhotometricInterpretation"] == "MONOCHROME2"
    assert header["PixelSpacing"] == "0.139\\0.14"
    assert header["ViewPosition"] == "PA" and header["Modality"] == "DX"
    assert header["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.1.1"
    assert all(isinstance(v, str | int | float) for v in header.values())
    text = repr(header)
    for secret in ("Doe", "12345678", "21800101", "Somewhere"):
        assert secret not in text
    assert read_dicom(path).header == header


def test_header_reads_without_pixel_data(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", ramp(), PixelData=None)
    header = read_dicom_header(path)
    assert header["Rows"] == 61 and header["WindowCenter"] is None


def test_png_and_jpeg_are_scaled_to_unit_range(tmp_path: Path) -> None:
    gray = (np.arange(61 * 50) % 256).astype(np.uint8).reshape(SHAPE)
    Image.fromarray(gray).save(tmp_path / "a.png")
    png = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(png.pixels, gray / 255.0, atol=1e-6)
    assert png.header == {"Rows": 61, "Columns": 50} and png.native_hw == SHAPE

    smooth = np.tile(np.linspace(0, 255, 50).astype(np.uint8), (61, 1))
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    jpg = read_jpeg(tmp_path / "a.jpg")
    assert jpg.pixels.shape == SHAPE and jpg.pixels.dtype == np.float32
    assert np.abs(jpg.pixels - smooth / 255.0).max() < 0.05


def test_sixteen_bit_png(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    np.testing.assert_allclose(
        read_image(tmp_path / "a.png").pixels, [[0.0, 32768 / 65535, 1.0]], atol=1e-6
    )


def test_read_image_dispatches_dicom(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", ramp(), WindowCenter=2048, WindowWidth=4096)
    np.testing.assert_array_equal(read_image(path).pixels, read_dicom(path).pixels)


def _garbage(p: Path) -> Path:
    p.write_bytes(b"this is not a DICOM file" * 20)
    return p


def _truncated(p: Path) -> Path:
    data = write_dicom(p, ramp(), WindowCenter=2048, WindowWidth=4096).read_bytes()
    p.write_bytes(data[:-500])
    return p


def _rgb(p: Path) -> Path:
    rgb = np.zeros((*SHAPE, 3), dtype=np.uint8)
    return write_dicom(
        p,
        rgb,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsStored=8,
        HighBit=7,
    )


def _dicom(**fields: Any) -> Callable[[Path], Path]:
    return lambda p: write_dicom(p, ramp(), **fields)


# case -> (how to make the bad file, the field the error must name)
BAD_DICOMS: dict[str, tuple[Callable[[Path], Path], str | None]] = {
    "missing file": (lambda p: p, None),
    "garbage": (_garbage, None),
    "truncated pixel data": (_truncated, "PixelData"),
    "no pixel data": (_dicom(PixelData=None), "PixelData"),
    "palette colour": (
        _dicom(PhotometricInterpretation="PALETTE COLOR"),
        "PhotometricInterpretation",
    ),
    "three samples": (_rgb, "SamplesPerPixel"),
    "zero rows": (_dicom(Rows=0), "Rows"),
    "huge columns": (_dicom(Columns=20_000), "Columns"),
    "NaN window centre": (_dicom(WindowCenter="NaN", WindowWidth=100), "WindowCenter"),
    "infinite window width": (_dicom(WindowCenter=100, WindowWidth="inf"), "WindowWidth"),
    "zero window width": (_dicom(WindowCenter=100, WindowWidth=0), "WindowWidth"),
    "empty window": (_dicom(WindowCenter=-100, WindowWidth=50), "WindowCenter"),
    "NaN slope": (_dicom(RescaleSlope="NaN"), "RescaleSlope"),
}


@pytest.mark.parametrize("case", list(BAD_DICOMS))
def test_bad_dicom_raises_data_error_naming_file_and_field(case: str, tmp_path: Path) -> None:
    make, field = BAD_DICOMS[case]
    path = make(tmp_path / "bad.dcm")
    with pytest.raises(DataError) as info:
        read_dicom(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert "bad.dcm" in str(info.value)
    if field is not None:
        assert field in str(info.value)


def test_header_of_garbage_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a DICOM"):
        read_dicom_header(_garbage(tmp_path / "x.dcm"))


@pytest.mark.parametrize(
    ("name", "make", "field"),
    [
        ("rgb.jpg", lambda p: Image.new("RGB", (5, 4)).save(p), "mode"),
        ("junk.jpg", lambda p: p.write_bytes(b"\xff\xd8 not really"), None),
        ("nothing.png", lambda p: None, None),
        ("image.bmp", lambda p: Image.new("L", (5, 4)).save(p), None),
    ],
)
def test_bad_raster_raises_data_error(
    name: str, make: Callable[[Path], object], field: str | None, tmp_path: Path
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(DataError) as info:
        read_image(path)
    assert info.value.file == str(path) and info.value.field == field
