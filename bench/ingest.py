"""Ingest benchmark: ``preprocess_image`` against a straightforward pydicom + numpy path.

Both turn a full-size 12-bit DICOM into the paper's 320x256 target: decode, rescale, window,
(landscape only: area-shrink to fit) centre in the 3200x2560 canvas, take every 10th pixel,
divide by the max. The baseline does it the obvious way: ``dcmread``, the full ``pixel_array``,
every pixel windowed in float32, OpenCV's area resize (landscape), a zero canvas, ``[::10, ::10]``.
``preprocess_image`` decodes only the stored values it samples (about 1% of them) and never
builds the canvas.

The images are written once into a temporary folder: MIMIC-CXR-sized portrait 3056x2544 and
landscape 2544x3056 views, 12 bits stored in 16, half of them MONOCHROME1, each with a window.
Both paths read the same files (in the page cache after writing) in alternating rounds on one
thread; throughput is images over the total time of the rounds. The largest difference of the two
targets checks that both do the same work.

``run()`` returns rows for the bench runner: throughput (images/s, baseline the naive path's,
target its minimum ratio) and the largest absolute difference (target its maximum).
Run: ``python -m bench.ingest``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from threadpoolctl import threadpool_limits

from model_lib.config import GeometryConfig
from model_lib.data.preprocess import preprocess_image

SHAPES: dict[str, tuple[int, int]] = {
    "portrait 3056x2544": (3056, 2544),
    "landscape 2544x3056": (2544, 3056),
}
FILES_PER_SHAPE = 3
ROUNDS = 3
TARGET_RATIO = 2.0
TARGET_MAX_DIFF = 1e-4
"""The paths differ only in float32 rounding (OpenCV's area resize vs the plans' weights)."""
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def synthetic_xray(hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint16 stored values in [0, 4095]: a bright elliptical thorax with smooth texture,
    dark surroundings and noise, so that windowing and clipping both have work to do."""
    h, w = hw
    y = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    body = np.clip(1.2 - (x / 0.85) ** 2 - (y / 0.95) ** 2, 0.0, 1.0)
    texture = 0.1 * np.sin(x * rng.uniform(20, 40)) * np.cos(y * rng.uniform(20, 40))
    noise = rng.normal(0.0, 0.02, (h, w)).astype(np.float32)
    values = 300.0 + 3500.0 * np.clip(body + texture + noise, 0.0, 1.0)
    return np.rint(values).astype(np.uint16)


def write_test_dicom(path: Path, stored: np.ndarray, monochrome1: bool) -> None:
    """Write ``stored`` (H, W) uint16 as an explicit-VR little-endian 12-bit DICOM with a window."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = _SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "2000"
    ds.WindowWidth = "3400"
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    stored = 4095 - stored if monochrome1 else stored
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def naive_preprocess(path: Path, geometry: GeometryConfig) -> np.ndarray:
    """The textbook path: decode every pixel, window, area-resize (OpenCV) when the image is larger
    than the canvas, paste into a zero canvas, take every stride-th pixel, divide by the max."""
    ds = pydicom.dcmread(path)
    x = ds.pixel_array.astype(np.float32)
    x = x * float(ds.get("RescaleSlope", 1.0)) + float(ds.get("RescaleIntercept", 0.0))
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    low, high = max(0.0, centre - width / 2), centre + width / 2
    x = np.clip((x - low) / (high - low), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        x = 1.0 - x
    canvas_h, canvas_w = geometry.pad_to
    h, w = x.shape
    fit = min(1.0, canvas_h / h, canvas_w / w)
    if fit < 1.0:
        size = (max(1, round(w * fit)), max(1, round(h * fit)))
        x = cv2.resize(x, size, interpolation=cv2.INTER_AREA)
        h, w = x.shape
    canvas = np.zeros((canvas_h, canvas_w), dtype=np.float32)
    top, left = (canvas_h - h) // 2, (canvas_w - w) // 2
    canvas[top : top + h, left : left + w] = x
    out_h, out_w = geometry.target_hw
    target = canvas[:: canvas_h // out_h, :: canvas_w // out_w]
    peak = float(target.max())
    return target / np.float32(peak) if peak > 0 else target


def _fast_preprocess(path: Path, geometry: GeometryConfig) -> np.ndarray:
    return preprocess_image(path, geometry)[0]


def write_inputs(folder: Path) -> dict[str, list[Path]]:
    """``FILES_PER_SHAPE`` DICOMs per shape in ``folder``, alternately MONOCHROME2 and 1."""
    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {}
    for name, hw in SHAPES.items():
        files[name] = []
        for i in range(FILES_PER_SHAPE):
            path = folder / f"{hw[0]}x{hw[1]}_{i}.dcm"
            write_test_dicom(path, synthetic_xray(hw, rng), monochrome1=i % 2 == 1)
            files[name].append(path)
    return files


def _images_per_s(fn: Callable[[Path], np.ndarray], paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        fn(path)
    return len(paths) / (time.perf_counter() - start)


def measure() -> list[dict[str, float | str]]:
    """Per shape: images/s of both paths (median over rounds), their ratio, the max difference."""
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, threadpool_limits(1):
            files = write_inputs(Path(tmp))
            return [_measure_shape(name, paths) for name, paths in files.items()]
    finally:
        cv2.setNumThreads(cv_threads)


def _measure_shape(name: str, paths: list[Path]) -> dict[str, float | str]:
    geometry = GeometryConfig()
    diff = max(
        float(np.abs(_fast_preprocess(p, geometry) - naive_preprocess(p, geometry)).max())
        for p in paths
    )
    fast, naive = [], []
    for _ in range(ROUNDS):
        naive.append(_images_per_s(lambda p: naive_preprocess(p, geometry), paths))
        fast.append(_images_per_s(lambda p: _fast_preprocess(p, geometry), paths))
    fast_rate, naive_rate = float(np.median(fast)), float(np.median(naive))
    print(f"  ingest {name}: {fast_rate:.1f} vs {naive_rate:.1f} images/s", flush=True)
    return {
        "case": name,
        "fast": fast_rate,
        "naive": naive_rate,
        "ratio": fast_rate / naive_rate,
        "max_diff": diff,
    }


def run() -> list[dict]:
    """Rows for the bench runner: name, value, unit, baseline, ratio, target, machine, date."""
    print("bench.ingest: writing full-size DICOMs, then timing both paths", flush=True)
    results = measure()
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, 1 thread"
    common = {"machine": " ".join(machine.split()), "date": date.today().isoformat()}
    rows = [
        {
            "name": f"ingest DICOM -> 320x256, {r['case']}",
            "value": r["fast"],
            "unit": "images/s",
            "baseline": r["naive"],
            "ratio": r["ratio"],
            "target": TARGET_RATIO,
            **common,
        }
        for r in results
    ]
    rows.append(
        {
            "name": "ingest max |fast - naive|",
            "value": max(r["max_diff"] for r in results),
            "unit": "abs",
            "baseline": None,
            "ratio": None,
            "target": TARGET_MAX_DIFF,
            **common,
        }
    )
    return rows


def main() -> None:
    results = measure()
    print(f"{'case':<22}{'naive img/s':>13}{'fast img/s':>12}{'ratio':>8}{'max diff':>11}")
    for r in results:
        print(
            f"{r['case']:<22}{r['naive']:>13.1f}{r['fast']:>12.1f}"
            f"{r['ratio']:>7.1f}x{r['max_diff']:>11.2e}"
        )
    worst = min(r["ratio"] for r in results)
    print(f"min ratio {worst:.1f}x (target >= {TARGET_RATIO:.0f}x)")


if __name__ == "__main__":
    main()
