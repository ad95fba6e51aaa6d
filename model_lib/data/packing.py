"""Turn an EGD-CXR release into the packed training store.

Decoding a full-size DICOM dominates ingest time, so images are decoded in a process pool;
everything else (gaze events, manifest rows) is grouped once with pandas, never per image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from model_lib.config import GeometryConfig
from model_lib.data import schema
from model_lib.data.dicom_io import read_raster_header, scan_dicom_header
from model_lib.data.egd_cxr import EgdTables, class_labels
from model_lib.data.errors import DataError
from model_lib.data.preprocess import preprocess_image
from model_lib.data.store import StoreWriter, file_sha256

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
HEADER_TABLE_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "Rows",
    "Columns",
    "BitsStored",
    "PhotometricInterpretation",
    "ViewPosition",
    "WindowCenter",
    "WindowWidth",
)
IDENTIFYING_TABLE_COLUMNS: tuple[str, ...] = ("dicom_id", "file", "identifying_fields")
"""Per image: its file (relative to the images root) and the identifying DICOM fields it fills,
as names joined by ", " ("" when none): :mod:`model_lib.data.phi`. Never their values."""


@dataclass(frozen=True)
class PackSummary:
    out_dir: Path
    split_counts: dict[str, int]
    n_gaze: int
    n_fixations: int


def read_image_headers(tables: EgdTables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per image (one row per master row, indexed like it), from one read of each header:
    the whitelisted header fields (:data:`HEADER_TABLE_COLUMNS`) and the names of the identifying
    fields it fills (:data:`IDENTIFYING_TABLE_COLUMNS`), both for validation.

    A missing or unreadable image is a DataError naming the file and the master-sheet record.
    """
    rows, identifying = [], []
    master_path = tables.egd_root / "master_sheet.csv"
    # Positional: a duplicated dicom_id must reach validation, not break a lookup here.
    paths = tables.image_paths.to_numpy()
    for (record, dicom_id), path in zip(tables.master["dicom_id"].items(), paths, strict=True):
        path = Path(path)
        if not path.is_file():
            raise DataError(master_path, f"image file not found: {path}", row=int(record),
                            field="path")  # fmt: skip
        fields: tuple[str, ...] = ()
        if path.suffix.lower() == ".dcm":
            header, fields = scan_dicom_header(path)
        else:
            header = read_raster_header(path)
        rows.append({"dicom_id": dicom_id, **header})
        identifying.append((dicom_id, _relative(path, tables.images_root), ", ".join(fields)))
    frame = pd.DataFrame(rows).reindex(columns=list(HEADER_TABLE_COLUMNS))
    frame.index = tables.master.index
    found = pd.DataFrame(identifying, columns=list(IDENTIFYING_TABLE_COLUMNS), dtype=object)
    found.index = tables.master.index
    return frame, found


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def pack_dataset(
    tables: EgdTables,
    splits: pd.Series,
    geometry: GeometryConfig,
    out_dir: Path,
    *,
    workers: int = 2,
    progress: bool = True,
    params: dict | None = None,
    write_extras: Callable[[Path], None] | None = None,
) -> PackSummary:
    """Decode, transform and write every image with its gaze events into a packed store.

    ``splits`` maps dicom_id -> "train" | "val" | "test" (see ``splits.assign_splits``).
    ``params`` are recorded in store.json; ``write_extras(folder)`` may add files (a report) to
    the store before it is committed. The store appears at ``out_dir`` only when complete.
    """
    master = tables.master.assign(
        label=class_labels(tables.master),
        split=splits.reindex(tables.master["dicom_id"]).to_numpy(),
    )
    if master["split"].isna().any():
        raise ValueError("every master-sheet image needs a split")
    events = _events_by_image(tables)
    counts = {name: int((master["split"] == name).sum()) for name in SPLITS}
    jobs = [(Path(p), geometry) for p in tables.image_paths.to_numpy()]
    with StoreWriter(out_dir, geometry, counts, params) as writer:
        decoded = _decode_all(jobs, workers)
        bar = tqdm(decoded, total=len(jobs), desc="ingest", unit="img", disable=not progress)
        for (_, row), (image, transform, sha) in zip(master.iterrows(), bar, strict=True):
            writer.add(
                row["split"],
                image,
                {
                    "dicom_id": row["dicom_id"],
                    "patient_id": int(row["patient_id"]),
                    "study_id": int(row["study_id"]),
                    "label": int(row["label"]),
                    "class_name": schema.CLASS_NAMES[int(row["label"])],
                    "source_sha256": sha,
                    **transform.to_dict(),
                },
                events.get(row["dicom_id"], _EMPTY_EVENTS),
            )
        if write_extras is not None:
            write_extras(writer.tmp_dir)
    log.info("wrote packed store %s: %s", out_dir, counts)
    return PackSummary(out_dir, counts, n_gaze=len(tables.gaze), n_fixations=len(tables.fixations))


_EMPTY_EVENTS = pd.DataFrame(
    {
        "source": pd.Series(dtype=str),
        "x": pd.Series(dtype=np.float32),
        "y": pd.Series(dtype=np.float32),
        "duration": pd.Series(dtype=np.float32),
        "time": pd.Series(dtype=np.float32),
    }
)


def _events_by_image(tables: EgdTables) -> dict[str, pd.DataFrame]:
    """Raw gaze samples and fixations of each image in native pixels, as released."""
    frames = []
    for source, table in (("gaze", tables.gaze), ("fixation", tables.fixations)):
        frames.append(
            pd.DataFrame(
                {
                    "dicom_id": table["DICOM_ID"].to_numpy(),
                    "source": source,
                    "x": table["X_ORIGINAL"].to_numpy(np.float32),
                    "y": table["Y_ORIGINAL"].to_numpy(np.float32),
                    "duration": (
                        table["FPOGD"].to_numpy(np.float32)
                        if source == "fixation"
                        else np.full(len(table), np.nan, np.float32)
                    ),
                    "time": table[schema.TIME_COLUMN].to_numpy(np.float32),
                }
            )
        )
    events = pd.concat(frames, ignore_index=True)
    return {
        dicom_id: group.drop(columns="dicom_id").reset_index(drop=True)
        for dicom_id, group in events.groupby("dicom_id", sort=False)
    }


def _decode_one(job: tuple[Path, GeometryConfig]):
    path, geometry = job
    image, transform, _header = preprocess_image(path, geometry)
    return image, transform, file_sha256(path)


def _decode_all(jobs: list[tuple[Path, GeometryConfig]], workers: int) -> Iterator:
    """Decoded images in input order; a pool only when it pays off."""
    workers = max(1, min(workers, os.cpu_count() or 1, len(jobs)))
    if workers == 1:
        yield from map(_decode_one, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_decode_one, jobs, chunksize=4)
