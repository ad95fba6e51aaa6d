"""Decode chest X-rays (DICOM, or MIMIC-CXR-JPG rasters) to display intensities in [0, 1].

DICOM follows the EGD display preparation (datasets.md 4.4, pipeline 2): rescale slope/intercept,
then window to [max(0, wc - ww/2), wc + ww/2] when the header has a window, else min-max; then
MONOCHROME1 is inverted so that bright always means dense tissue. JPEG/PNG files from MIMIC-CXR-JPG
are already inverted and equalised, so they are only scaled to [0, 1].

Decoding is split in two: :class:`RawImage` holds the stored values and the pointwise
:class:`Intensity` map, so a caller that needs only some pixels (the preprocessing samples about
1% of them) can map just those. ``read_*`` apply the map to every pixel.

Only the whitelisted, non-identifying :data:`HEADER_FIELDS` ever leave this module: names, ids,
dates and institutions stay in the file. :func:`scan_dicom_header` also says which identifying
fields a file fills, by name only (:mod:`model_lib.data.phi`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from model_lib.data.errors import DataError
from model_lib.data.phi import identifying_fields

Header = dict[str, str | int | float | None]

HEADER_FIELDS: tuple[str, ...] = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "PhotometricInterpretation",
    "WindowCenter",
    "WindowWidth",
    "RescaleSlope",
    "RescaleIntercept",
    "ViewPosition",
    "Modality",
    "PixelSpacing",
    "SOPClassUID",
)
"""The only header fields that leave ingest. Window values keep their first value only;
PixelSpacing is the DICOM string 'row\\\\column' in mm (e.g. '0.139\\\\0.139')."""

MAX_SIDE = 10_000
"""Largest accepted Rows/Columns: MIMIC-CXR tops out near 4,300; larger means a corrupt header."""

SUPPORTED_PHOTOMETRIC: tuple[str, ...] = ("MONOCHROME1", "MONOCHROME2")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
RASTER_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

_INT_FIELDS = ("Rows", "Columns", "BitsAllocated", "BitsStored")
_FLOAT_FIELDS = ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")
# PIL modes of single-channel rasters and the stored value that means full white.
_RASTER_WHITE: dict[str, float] = {"L": 255.0, "I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0}


@dataclass(frozen=True)
class DicomImage:
    """A decoded image: ``pixels`` (H, W) float32 in [0, 1], bright = dense tissue."""

    pixels: np.ndarray
    native_hw: tuple[int, int]
    header: Header


@dataclass(frozen=True)
class Intensity:
    """Pointwise map from stored values to display intensities in [0, 1].

    Applied in order: clear the unused high bits (``bits_stored`` of ``bits_allocated``, as
    pydicom's ``pixel_array`` does), ``value * slope + intercept``, window ``[low, high]`` scaled
    to [0, 1] and clipped, then ``1 - x`` when ``invert``. ``high == low`` (a flat image without
    a window) maps everything to 0 before inversion.
    """

    low: float
    high: float
    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False
    bits_allocated: int = 0
    bits_stored: int = 0

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        """Stored values of any shape -> float32 of the same shape in [0, 1]."""
        x = clear_unused_bits(stored, self.bits_allocated, self.bits_stored).astype(np.float32)
        if self.slope != 1.0 or self.intercept != 0.0:
            x *= np.float32(self.slope)
            x += np.float32(self.intercept)
        if self.high > self.low:
            x -= np.float32(self.low)
            x *= np.float32(1.0 / (self.high - self.low))
            np.clip(x, 0.0, 1.0, out=x)
        else:
            x[...] = 0.0
        if self.invert:
            np.subtract(np.float32(1.0), x, out=x)
        return x

    def stored_values(self) -> StoredValues:
        """The stored values as float32 with the unused bits cleared: pydicom's ``pixel_array``,
        no rescale, window or inversion (the authors' input, divided by its max later)."""
        return StoredValues(self.bits_allocated, self.bits_stored)


@dataclass(frozen=True)
class StoredValues:
    """Stored values -> float32, unused high bits cleared (as pydicom's ``pixel_array``)."""

    bits_allocated: int = 0
    bits_stored: int = 0

    def __call__(self, stored: np.ndarray) -> np.ndarray:
        return clear_unused_bits(stored, self.bits_allocated, self.bits_stored).astype(np.float32)


@dataclass(frozen=True)
class RawImage:
    """Stored values (H, W), possibly a read-only view, plus the map that displays them."""

    stored: np.ndarray
    intensity: Intensity
    header: Header

    @property
    def native_hw(self) -> tuple[int, int]:
        h, w = self.stored.shape
        return int(h), int(w)

    def decode(self) -> DicomImage:
        """Map every pixel: (H, W) float32 in [0, 1]."""
        return DicomImage(self.intensity(self.stored), self.native_hw, self.header)


def clear_unused_bits(stored: np.ndarray, bits_allocated: int, bits_stored: int) -> np.ndarray:
    """Drop the bits above ``bits_stored`` (sign-extending signed data), as pydicom does."""
    shift = bits_allocated - bits_stored
    if shift <= 0:
        return stored
    return np.right_shift(np.left_shift(stored, shift), shift)


def read_dicom_header(path: str | Path) -> Header:
    """The whitelisted :data:`HEADER_FIELDS` of a DICOM file, without reading its pixels.

    Absent fields are ``None``; window values are the first of a multi-valued field (NaN is
    returned as is: validation reports it, :func:`read_dicom` rejects it).
    """
    return _required(_header(_dcmread(path, stop_before_pixels=True), path), path)


def scan_dicom_header(path: str | Path) -> tuple[Header, tuple[str, ...]]:
    """:func:`read_dicom_header` plus the names (never the values) of the identifying fields the
    file fills (:func:`model_lib.data.phi.identifying_fields`), from one read of the header."""
    ds = _dcmread(path, stop_before_pixels=True)
    return _required(_header(ds, path), path), identifying_fields(ds)


def read_raster_header(path: str | Path) -> Header:
    """Rows and Columns of a JPEG/PNG from its header (PIL opens lazily: no pixels decoded)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as exc:  # fmt: skip
        raise DataError(path, f"cannot decode image: {exc}") from exc
    return {"Rows": h, "Columns": w}


def read_dicom(path: str | Path) -> DicomImage:
    """Decode, rescale, window and (for MONOCHROME1) invert a DICOM: pixels (H, W) in [0, 1]."""
    return read_dicom_raw(path).decode()


def read_jpeg(path: str | Path) -> DicomImage:
    """Read an 8-bit (or 16-bit PNG) grayscale raster, scaled to [0, 1]; header Rows/Columns."""
    return read_raster_raw(path).decode()


def read_image(path: str | Path) -> DicomImage:
    """Dispatch on the suffix: .dcm/.dicom -> :func:`read_dicom`, .jpg/.jpeg/.png -> JPEG."""
    return read_raw(path).decode()


def read_raw(path: str | Path) -> RawImage:
    """Like :func:`read_image` but leaves the intensity map unapplied."""
    suffix = Path(path).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return read_dicom_raw(path)
    if suffix in RASTER_SUFFIXES:
        return read_raster_raw(path)
    raise DataError(
        path, f"unsupported image suffix {suffix!r}: expected {DICOM_SUFFIXES + RASTER_SUFFIXES}"
    )


def read_dicom_raw(path: str | Path) -> RawImage:
    """Validate the image module, decode the stored values and derive the intensity map."""
    ds = _dcmread(path, stop_before_pixels=False)
    header = _header(ds, path)
    if "PixelData" not in ds:
        raise DataError(path, "no pixel data", field="PixelData")
    rows, cols = _check_image_module(ds, header, path)
    try:
        # A view on the file's bytes, unused bits not yet cleared: Intensity does that pointwise,
        # so only the pixels a caller maps pay for it.
        stored = pydicom.pixels.pixel_array(ds, view_only=True, correct_unused_bits=False)
    except Exception as exc:  # pydicom raises many types for bad pixel data; report one
        raise DataError(path, f"cannot decode pixel data: {exc}", field="PixelData") from exc
    if stored.shape != (rows, cols):
        raise DataError(
            path,
            f"decoded shape {stored.shape} is not (Rows, Columns) = {(rows, cols)}",
            field="PixelData",
        )
    intensity = _dicom_intensity(header, stored, path)
    return RawImage(stored, intensity, header)


def read_raster_raw(path: str | Path) -> RawImage:
    """Open a single-channel JPEG/PNG with PIL; the intensity map divides by full white."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
            _check_size(h, w, path)
            if img.mode not in _RASTER_WHITE:
                raise DataError(
                    path, f"expected a grayscale image, got PIL mode {img.mode!r}", field="mode"
                )
            white = _RASTER_WHITE[img.mode]
            stored = np.asarray(img)
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as exc:  # fmt: skip  # PIL: ValueError for a truncated IHDR chunk
        raise DataError(path, f"cannot decode image: {exc}") from exc
    header: Header = {"Rows": h, "Columns": w}
    return RawImage(stored, Intensity(low=0.0, high=white), header)


def _dcmread(path: str | Path, *, stop_before_pixels: bool) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise DataError(path, f"not a DICOM file: {exc}") from exc
    except Exception as exc:  # truncated or malformed element streams raise many types
        raise DataError(path, f"cannot parse DICOM: {exc!r}") from exc


def _header(ds: Dataset, path: str | Path) -> Header:
    header: Header = {}
    for name in HEADER_FIELDS:
        try:
            header[name] = _field_value(ds, name)
        except Exception as exc:  # pydicom converts lazily: Overflow, NotImplemented, ...
            raise DataError(path, f"unreadable value: {exc}", field=name) from exc
    return header


_REQUIRED = ("Rows", "Columns", "BitsAllocated", "PhotometricInterpretation")


def _required(header: Header, path: str | Path) -> Header:
    """A header without the image module (pydicom stops quietly at a truncated header)."""
    for name in _REQUIRED:
        if header[name] is None:
            raise DataError(path, "required for decoding but absent", field=name)
    return header


def _field_value(ds: Dataset, name: str) -> str | int | float | None:
    with warnings.catch_warnings():
        # pydicom warns about malformed DS/IS strings; the value is checked where it is used.
        warnings.simplefilter("ignore", UserWarning)
        value: Any = ds.get(name)
        if value is None and name == "SOPClassUID":
            value = getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID")
        if value is None or value == "":
            return None
        if name in _INT_FIELDS:
            return int(value)
        if name in _FLOAT_FIELDS:
            return float(_first(value))
        if name == "PixelSpacing":
            values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
            return "\\".join(str(float(v)) for v in values)
        return str(value).strip()


def _first(value: Any) -> Any:
    """First value of a multi-valued field, also when it arrives as one 'a\\b' string."""
    if isinstance(value, MultiValue | list | tuple):
        return value[0]
    if isinstance(value, str | bytes):
        text = value.decode() if isinstance(value, bytes) else value
        return text.split("\\")[0]
    return value


def _check_size(rows: int, cols: int, path: str | Path) -> None:
    for name, size in (("Rows", rows), ("Columns", cols)):
        if not 0 < size <= MAX_SIDE:
            raise DataError(path, f"{size} is outside 1..{MAX_SIDE}", field=name)


def _check_image_module(ds: Dataset, header: Header, path: str | Path) -> tuple[int, int]:
    _required(header, path)
    rows, cols = int(header["Rows"]), int(header["Columns"])  # type: ignore[arg-type]
    _check_size(rows, cols, path)
    samples = _module_value(ds, "SamplesPerPixel", path)
    if samples != 1:
        raise DataError(path, f"{samples} samples per pixel; expected 1", field="SamplesPerPixel")
    frames = _module_value(ds, "NumberOfFrames", path)
    if frames not in (None, "", 1):
        raise DataError(path, f"{frames} frames; expected 1", field="NumberOfFrames")
    photometric = header["PhotometricInterpretation"]
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise DataError(
            path,
            f"{photometric!r} is not one of {SUPPORTED_PHOTOMETRIC}",
            field="PhotometricInterpretation",
        )
    return rows, cols


def _module_value(ds: Dataset, name: str, path: str | Path) -> Any:
    try:
        return ds.get(name, 1)
    except Exception as exc:  # a malformed value fails when pydicom converts it
        raise DataError(path, f"unreadable value: {exc}", field=name) from exc


def _finite(header: Header, name: str, path: str | Path) -> float | None:
    value = header[name]
    if value is None:
        return None
    if not math.isfinite(float(value)):
        raise DataError(path, f"{value} is not a finite number", field=name)
    return float(value)


def _dicom_intensity(header: Header, stored: np.ndarray, path: str | Path) -> Intensity:
    bits_allocated = int(header["BitsAllocated"])  # type: ignore[arg-type]
    bits_stored = int(header["BitsStored"] or bits_allocated)
    slope = _finite(header, "RescaleSlope", path)
    slope = 1.0 if slope is None else slope
    intercept = _finite(header, "RescaleIntercept", path) or 0.0
    if slope == 0.0:
        raise DataError(path, "a zero slope erases the image", field="RescaleSlope")
    center = _finite(header, "WindowCenter", path)
    width = _finite(header, "WindowWidth", path)
    if center is not None and width is not None:
        if width <= 0:
            raise DataError(path, f"window width {width} must be positive", field="WindowWidth")
        low, high = max(0.0, center - width / 2), center + width / 2
        if high <= low:
            raise DataError(
                path,
                f"window [{low}, {high}] is empty (centre {center}, width {width})",
                field="WindowCenter",
            )
    else:
        # No window: min-max over the rescaled values (slope may be negative, so rescale both).
        values = clear_unused_bits(stored, bits_allocated, bits_stored)
        ends = (float(values.min()) * slope + intercept, float(values.max()) * slope + intercept)
        low, high = min(ends), max(ends)
    return Intensity(
        low=low,
        high=high,
        slope=slope,
        intercept=intercept,
        invert=header["PhotometricInterpretation"] == "MONOCHROME1",
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
    )
