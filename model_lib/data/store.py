"""The packed store: a few large files per split instead of one file per image.

Layout of ``<store>/``::

    manifest.parquet         one row per image, all splits (MANIFEST_COLUMNS + caller extras)
    <split>/images.npy       (N, H, W) uint16, image in [0, 1] * 65535 rounded; memory-mappable
    <split>/points.parquet   one row per gaze event (POINT_COLUMNS), x/y in native pixels
    store.json               format version, geometry, split counts, the caller's creation params

DVC and object stores are slow with many small files, hence the packing. A store is written
under a hidden temporary name next to its destination and renamed into place only when complete,
so a failed write leaves nothing and an existing store is replaced only by a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd

from model_lib.config import GeometryConfig
from model_lib.data.errors import DataError
from model_lib.data.schema import CLASS_NAMES

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.parquet"
META_FILE = "store.json"
IMAGES_FILE = "images.npy"
POINTS_FILE = "points.parquet"
IMAGE_SCALE = 65535
"""uint16 code of intensity 1.0."""

TRANSFORM_COLUMNS: tuple[str, ...] = (
    "native_h",
    "native_w",
    "fit",
    "offset_y",
    "offset_x",
    "stride_y",
    "stride_x",
    "out_h",
    "out_w",
)
"""CanvasTransform fields, as ``CanvasTransform.to_dict()`` names them."""
RECORD_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "patient_id",
    "study_id",
    "label",
    *TRANSFORM_COLUMNS,
    "source_sha256",
)
"""What :meth:`StoreWriter.add` needs in each record (any further keys become extra columns;
class_name is derived from label, and checked when given)."""
MANIFEST_COLUMNS: tuple[str, ...] = ("index_in_split", "split", *RECORD_COLUMNS, "class_name")
POINT_COLUMNS: tuple[str, ...] = (
    "index_in_split",
    "dicom_id",
    "source",
    "x",
    "y",
    "duration",
    "time",
)
POINT_SOURCES: tuple[str, ...] = ("gaze", "fixation")
_POINT_DTYPES = {"x": np.float32, "y": np.float32, "duration": np.float32, "time": np.float64}


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class StoreWriter:
    """Write a packed store; use as a context manager.

    ``splits`` gives each split's image count up front, so images go straight into preallocated
    memory-mapped arrays; every split must be filled exactly when the block ends. Points and
    the manifest are collected and written once at the end. ``params`` (JSON-serialisable) are
    recorded in store.json as the creation parameters.
    """

    def __init__(
        self,
        out_dir: str | Path,
        geometry: GeometryConfig,
        splits: Mapping[str, int],
        params: Mapping[str, Any] | None = None,
    ) -> None:
        for name, count in splits.items():
            if not name or "/" in name or name.startswith(".") or count < 0:
                raise ValueError(f"bad split {name!r} with count {count}")
        self.out_dir = Path(out_dir)
        self.geometry = geometry
        self.splits = dict(splits)
        self.params = dict(params or {})
        json.dumps(self.params)  # fail before any work if the params cannot be recorded
        self.tmp_dir = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}"
        self._images: dict[str, np.memmap] = {}
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._points: dict[str, list[pd.DataFrame]] = {}
        self._ids: set[str] = set()

    def __enter__(self) -> StoreWriter:
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        h, w = self.geometry.target_hw
        try:
            self.tmp_dir.mkdir(parents=True)
            for name, count in self.splits.items():
                (self.tmp_dir / name).mkdir()
                self._images[name] = np.lib.format.open_memmap(
                    self.tmp_dir / name / IMAGES_FILE,
                    mode="w+",
                    dtype=np.uint16,
                    shape=(count, h, w),
                )
                self._records[name] = []
                self._points[name] = []
        except BaseException:
            self._discard()
            raise
        return self

    def add(
        self, split: str, image: np.ndarray, record: Mapping[str, Any], points: pd.DataFrame
    ) -> int:
        """Append one image (H, W) in [0, 1] with its manifest record and gaze points.

        ``points`` has columns source ('gaze' | 'fixation'), x, y (native pixels), duration (s,
        NaN for raw gaze) and time (s); it may be empty. Returns the image's index in the split.
        """
        if split not in self._images:
            raise ValueError(
                f"unknown split {split!r} (declared: {list(self.splits)}) or writer not entered"
            )
        dicom_id = str(record.get("dicom_id"))
        missing = [c for c in RECORD_COLUMNS if c not in record]
        if missing:
            raise ValueError(f"{dicom_id}: record lacks {missing}")
        reserved = {"index_in_split", "split"} & set(record)
        if reserved:
            raise ValueError(f"{dicom_id}: record sets reserved columns {sorted(reserved)}")
        if dicom_id in self._ids:
            raise ValueError(f"{dicom_id}: added twice")
        index = len(self._records[split])
        if index >= self.splits[split]:
            raise ValueError(f"{dicom_id}: split {split!r} already holds its {index} images")
        label = record["label"]
        if not (isinstance(label, int | np.integer) and 0 <= label < len(CLASS_NAMES)):
            raise ValueError(f"{dicom_id}: label {label!r} is not a class index 0..2")
        if record.get("class_name", CLASS_NAMES[label]) != CLASS_NAMES[label]:
            raise ValueError(
                f"{dicom_id}: class_name {record['class_name']!r} contradicts label {label}"
            )
        if (record["out_h"], record["out_w"]) != tuple(self.geometry.target_hw):
            raise ValueError(
                f"{dicom_id}: transform output {(record['out_h'], record['out_w'])} is not "
                f"target_hw {self.geometry.target_hw}"
            )
        self._check_image(image, dicom_id)
        frame = self._check_points(points, dicom_id)

        self._images[split][index] = np.rint(image * IMAGE_SCALE).astype(np.uint16)
        self._records[split].append(
            {
                "index_in_split": index,
                "split": split,
                **record,
                "label": int(label),
                "class_name": CLASS_NAMES[int(label)],
            }
        )
        frame.insert(0, "dicom_id", dicom_id)
        frame.insert(0, "index_in_split", index)
        self._points[split].append(frame)
        self._ids.add(dicom_id)
        return index

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self._finish()
        except BaseException:
            self._discard()
            raise
        if exc_type is not None:
            self._discard()

    def _check_image(self, image: np.ndarray, dicom_id: str) -> None:
        if image.shape != tuple(self.geometry.target_hw):
            raise ValueError(
                f"{dicom_id}: image shape {image.shape} is not target_hw {self.geometry.target_hw}"
            )
        if not np.isfinite(image).all():
            raise ValueError(f"{dicom_id}: image has NaN or infinite values")
        if image.size and (image.min() < 0 or image.max() > 1):
            raise ValueError(
                f"{dicom_id}: image values span [{image.min()}, {image.max()}], not [0, 1]"
            )

    def _check_points(self, points: pd.DataFrame, dicom_id: str) -> pd.DataFrame:
        columns = POINT_COLUMNS[2:]
        missing = [c for c in columns if c not in points.columns]
        if missing:
            raise ValueError(f"{dicom_id}: points lack columns {missing}")
        bad = set(points["source"].unique()) - set(POINT_SOURCES)
        if bad:
            raise ValueError(
                f"{dicom_id}: point sources {sorted(map(str, bad))} not in {POINT_SOURCES}"
            )
        frame = points.loc[:, list(columns)].reset_index(drop=True)
        return frame.astype({"source": str, **_POINT_DTYPES})

    def _finish(self) -> None:
        unfilled = {
            s: (len(r), self.splits[s])
            for s, r in self._records.items()
            if len(r) != self.splits[s]
        }
        if unfilled:
            raise ValueError(f"splits not filled (added, declared): {unfilled}")
        for name, images in self._images.items():
            images.flush()
            _points_frame(self._points[name]).to_parquet(
                self.tmp_dir / name / POINTS_FILE, index=False
            )
        self._images.clear()
        manifest = pd.DataFrame([r for name in self.splits for r in self._records[name]])
        extras = [c for c in manifest.columns if c not in MANIFEST_COLUMNS]
        manifest = manifest.reindex(columns=[*MANIFEST_COLUMNS, *extras])
        manifest.to_parquet(self.tmp_dir / MANIFEST_FILE, index=False)
        meta = {
            "format_version": FORMAT_VERSION,
            "geometry": self.geometry.model_dump(mode="json"),
            "splits": self.splits,
            "image_dtype": "uint16",
            "image_scale": IMAGE_SCALE,
            "params": self.params,
        }
        (self.tmp_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(self.tmp_dir, self.out_dir)

    def _discard(self) -> None:
        self._images.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


class StoreSplit:
    """One split of an open store: images (N, H, W) uint16 memmap, its manifest and points."""

    def __init__(self, root: Path, name: str, manifest: pd.DataFrame, shape: tuple[int, int]):
        self.name = name
        self.manifest = manifest
        images_path = root / name / IMAGES_FILE
        try:
            self.images: np.ndarray = np.load(images_path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise DataError(images_path, f"cannot open image array: {exc}") from exc
        expected = (len(manifest), *shape)
        if self.images.dtype != np.uint16 or self.images.shape != expected:
            raise DataError(
                images_path,
                f"holds {self.images.dtype} {self.images.shape}; expected uint16 {expected}",
            )
        self._points_path = root / name / POINTS_FILE
        if not self._points_path.is_file():
            raise DataError(self._points_path, "missing")

    def __len__(self) -> int:
        return len(self.manifest)

    @cached_property
    def points(self) -> pd.DataFrame:
        """All gaze events of the split, ordered by index_in_split (read on first use)."""
        points = _read_parquet(self._points_path, POINT_COLUMNS)
        return points.sort_values("index_in_split", kind="stable").reset_index(drop=True)

    def image(self, i: int) -> np.ndarray:
        """Image ``i`` as float32 (H, W) in [0, 1]."""
        return self.images[i].astype(np.float32) / np.float32(IMAGE_SCALE)

    def points_for(self, i: int) -> pd.DataFrame:
        """The gaze events of image ``i``."""
        keys = self.points["index_in_split"].to_numpy()
        lo, hi = np.searchsorted(keys, [i, i + 1])
        return self.points.iloc[lo:hi].reset_index(drop=True)


class PackedStore:
    """A packed store opened for reading: ``PackedStore.open(path).split("train")``."""

    def __init__(self, path: Path, meta: dict[str, Any], manifest: pd.DataFrame) -> None:
        self.path = path
        self.meta = meta
        self.manifest = manifest
        # As in store.json, so it can be logged as is; GeometryConfig(**geometry) rebuilds it.
        self.geometry: dict[str, Any] = meta["geometry"]
        self._splits: dict[str, StoreSplit] = {}

    @classmethod
    def open(cls, path: str | Path) -> PackedStore:
        """Read store.json and the manifest; raise :class:`DataError` naming a bad file."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise DataError(meta_path, "missing: not a packed store")
        try:
            meta = json.loads(meta_path.read_text())
            version = meta["format_version"]
            GeometryConfig(**meta["geometry"])
            counts = {str(k): int(v) for k, v in meta["splits"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(meta_path, f"unreadable store metadata: {exc!r}") from exc
        if version != FORMAT_VERSION:
            raise DataError(
                meta_path,
                f"format version {version}; this code reads {FORMAT_VERSION}",
                field="format_version",
            )
        manifest_path = path / MANIFEST_FILE
        manifest = _read_parquet(manifest_path, MANIFEST_COLUMNS)
        found = manifest["split"].value_counts().to_dict()
        for name, count in counts.items():
            if found.get(name, 0) != count:
                raise DataError(
                    manifest_path,
                    f"{found.get(name, 0)} rows for split {name!r}, store.json says {count}",
                    field="split",
                )
        return cls(path, meta, manifest)

    @property
    def split_names(self) -> tuple[str, ...]:
        return tuple(self.meta["splits"])

    def split(self, name: str) -> StoreSplit:
        """The named split (opened once, then cached)."""
        if name not in self.meta["splits"]:
            raise KeyError(f"{self.path}: no split {name!r} (has {list(self.split_names)})")
        if name not in self._splits:
            rows = self.manifest[self.manifest["split"] == name]
            rows = rows.sort_values("index_in_split").reset_index(drop=True)
            shape = GeometryConfig(**self.geometry).target_hw
            self._splits[name] = StoreSplit(self.path, name, rows, shape)
        return self._splits[name]


def _points_frame(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if frames:
        return pd.concat(frames, ignore_index=True)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in POINT_COLUMNS})
    return empty.astype(
        {"index_in_split": np.int64, "dicom_id": str, "source": str, **_POINT_DTYPES}
    )


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(path, "missing")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise DataError(path, f"unreadable parquet: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(path, f"lacks columns {missing}", field=missing[0])
    return frame


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; an existing ``dst`` is swapped out only after ``src`` is done."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.parent / f".{dst.name}.old-{os.getpid()}"
    if old.exists():
        shutil.rmtree(old)
    dst.rename(old)
    try:
        src.rename(dst)
    except OSError:
        old.rename(dst)
        raise
    shutil.rmtree(old)
