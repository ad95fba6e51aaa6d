"""Ground-truth gaze maps for every image of a packed store, one array per split."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from model_lib.config import GeometryConfig, HeatmapConfig
from model_lib.data.errors import DataError
from model_lib.data.heatmap import heatmap_for_events
from model_lib.data.store import PackedStore

log = logging.getLogger(__name__)

MAPS_FILE = "maps.npy"
META_FILE = "gaze_maps.json"


@dataclass(frozen=True)
class GazeMapsSummary:
    out_dir: Path
    split_counts: dict[str, int]
    source: str
    sigma_px: float

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        return f"gaze maps ({self.source}, sigma {self.sigma_px:g} px) in {self.out_dir} ({counts})"


def write_gaze_maps(
    store_dir: Path, out_dir: Path, cfg: HeatmapConfig, *, progress: bool = True
) -> GazeMapsSummary:
    """Write ``<out_dir>/<split>/maps.npy`` (N, H, W) float16, each map max-normalised.

    Row i of a split's maps belongs to image i of the same split in the store. An image with no
    gaze point inside it is a DataError naming the image. The folder appears only when complete.
    """
    store = PackedStore.open(store_dir)
    geometry = GeometryConfig(**store.geometry)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = {}
    try:
        for name in store.split_names:
            split = store.split(name)
            (tmp / name).mkdir(parents=True)
            maps = np.lib.format.open_memmap(
                tmp / name / MAPS_FILE, mode="w+", dtype=np.float16,
                shape=(len(split), *geometry.target_hw),
            )  # fmt: skip
            for i in tqdm(range(len(split)), desc=f"heatmaps {name}", disable=not progress):
                maps[i] = _map_for(split, i, cfg, geometry, store_dir)
            maps.flush()
            del maps
            counts[name] = len(split)
        meta = {"source": cfg.source, "heatmap": cfg.model_dump(), "geometry": store.geometry,
                "splits": counts, "store": str(store_dir)}  # fmt: skip
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote gaze maps %s: %s", out_dir, counts)
    return GazeMapsSummary(out_dir, counts, cfg.source, cfg.sigma_px)


def load_gaze_maps(maps_dir: Path, split: str) -> np.ndarray:
    """The (N, H, W) float16 maps of one split, memory-mapped."""
    path = Path(maps_dir) / split / MAPS_FILE
    if not path.is_file():
        raise DataError(path, "gaze maps not found (run `cxrgaze heatmaps`)")
    return np.load(path, mmap_mode="r")


def _map_for(split, i: int, cfg: HeatmapConfig, geometry: GeometryConfig, store_dir: Path):
    row = split.manifest.iloc[i]
    events = split.points_for(i)
    events = events[events["source"] == ("gaze" if cfg.source == "gaze" else "fixation")]
    try:
        return heatmap_for_events(
            events["x"].to_numpy(),
            events["y"].to_numpy(),
            events["duration"].to_numpy(),
            cfg.source,
            (int(row["native_h"]), int(row["native_w"])),
            cfg,
            geometry,
        )
    except ValueError as err:
        raise DataError(store_dir, f"image {row['dicom_id']}: {err}", field="points") from err
