"""Ground-truth gaze maps for every image of a packed store, one array per split.

Gaze events outside their image (the released negative X/Y_ORIGINAL of samples off screen or on
the display padding, and the (0, 0) marker they become on small images) are dropped from the
maps, as :func:`~model_lib.data.heatmap.heatmap_for_events` does; the summary counts them.
"""

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
class DroppedPoints:
    """Events of one map source left out of the maps because they lie outside their image.

    ``events`` and ``dropped`` count over every image; ``worst`` is the image with the largest
    dropped fraction as (dicom_id, dropped, events), None when nothing was dropped.
    """

    events: int = 0
    dropped: int = 0
    worst: tuple[str, int, int] | None = None

    def add(self, dicom_id: str, dropped: int, events: int) -> DroppedPoints:
        worst = self.worst
        if dropped and (worst is None or dropped * worst[2] > worst[1] * events):
            worst = (dicom_id, dropped, events)
        return DroppedPoints(self.events + events, self.dropped + dropped, worst)

    def describe(self, source: str) -> str:
        """One line, e.g. 'dropped 8 of 210 gaze points (3.8%) outside their image (...)'."""
        kind = "gaze" if source == "gaze" else "fixation"
        share = f" ({self.dropped / self.events:.1%})" if self.events else ""
        text = (f"dropped {self.dropped:,} of {self.events:,} {kind} points{share} outside "
                "their image (off screen or on the display padding)")  # fmt: skip
        if self.worst is not None:
            dicom_id, dropped, events = self.worst
            text += f"; most in image {dicom_id}: {dropped:,} of {events:,}"
        return text


@dataclass(frozen=True)
class GazeMapsSummary:
    out_dir: Path
    split_counts: dict[str, int]
    source: str
    sigma_px: float
    dropped: DroppedPoints = DroppedPoints()

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        return f"gaze maps ({self.source}, sigma {self.sigma_px:g} px) in {self.out_dir} ({counts})"


def write_gaze_maps(
    store_dir: Path, out_dir: Path, cfg: HeatmapConfig, *, progress: bool = True
) -> GazeMapsSummary:
    """Write ``<out_dir>/<split>/maps.npy`` (N, H, W) float16, each map max-normalised.

    Row i of a split's maps belongs to image i of the same split in the store. Events outside
    their image are dropped (counted in the summary and in gaze_maps.json). An image with no gaze
    point inside it is a DataError naming the image. The folder appears only when complete.
    """
    store = PackedStore.open(store_dir)
    geometry = GeometryConfig(**store.geometry)
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts, dropped = {}, DroppedPoints()
    try:
        for name in store.split_names:
            split = store.split(name)
            (tmp / name).mkdir(parents=True)
            maps = np.lib.format.open_memmap(
                tmp / name / MAPS_FILE, mode="w+", dtype=np.float16,
                shape=(len(split), *geometry.target_hw),
            )  # fmt: skip
            for i in tqdm(range(len(split)), desc=f"heatmaps {name}", disable=not progress):
                maps[i], outside, events = _map_for(split, i, cfg, geometry, store_dir)
                dropped = dropped.add(str(split.manifest.iloc[i]["dicom_id"]), outside, events)
            maps.flush()
            del maps
            counts[name] = len(split)
        meta = {"source": cfg.source, "heatmap": cfg.model_dump(), "geometry": store.geometry,
                "splits": counts, "store": str(store_dir),
                "points": {"events": dropped.events, "dropped": dropped.dropped}}  # fmt: skip
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote gaze maps %s: %s", out_dir, counts)
    return GazeMapsSummary(out_dir, counts, cfg.source, cfg.sigma_px, dropped)


def load_gaze_maps(maps_dir: Path, split: str) -> np.ndarray:
    """The (N, H, W) float16 maps of one split, memory-mapped."""
    path = Path(maps_dir) / split / MAPS_FILE
    if not path.is_file():
        raise DataError(path, "gaze maps not found (run `cxrgaze heatmaps`)")
    return np.load(path, mmap_mode="r")


def outside_image(x: np.ndarray, y: np.ndarray, native_hw: tuple[int, int]) -> np.ndarray:
    """(N,) bool: the events ``heatmap_for_events`` leaves out of an image of ``native_hw``:
    outside [0, W) x [0, H) (negative X/Y_ORIGINAL included) or the (0, 0) off-image marker."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    height, width = native_hw
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    return ~inside | ((x == 0) & (y == 0))


def _map_for(
    split, i: int, cfg: HeatmapConfig, geometry: GeometryConfig, store_dir: Path
) -> tuple[np.ndarray, int, int]:
    """Image i's map, with how many of its events were dropped (outside it) and used in all."""
    row = split.manifest.iloc[i]
    events = split.points_for(i)
    events = events[events["source"] == ("gaze" if cfg.source == "gaze" else "fixation")]
    native_hw = (int(row["native_h"]), int(row["native_w"]))
    outside = int(outside_image(events["x"].to_numpy(), events["y"].to_numpy(), native_hw).sum())
    try:
        heat = heatmap_for_events(
            events["x"].to_numpy(),
            events["y"].to_numpy(),
            events["duration"].to_numpy(),
            cfg.source,
            native_hw,
            cfg,
            geometry,
        )
    except ValueError as err:
        raise DataError(store_dir, str(err), field="points", dicom_id=str(row["dicom_id"])) from err
    return heat, outside, len(events)
