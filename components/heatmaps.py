"""Heatmaps step: gaze events of the packed store -> ground-truth maps at the target size."""

from __future__ import annotations

from pathlib import Path

from model_lib.config import DataConfig
from model_lib.data.gaze_maps import GazeMapsSummary, write_gaze_maps


def run_heatmaps(
    store: Path, out: Path, cfg: DataConfig, *, progress: bool = True
) -> GazeMapsSummary:
    """Write one map per image; sigma is scaled to the images' size (``cfg.native_scale``)."""
    return write_gaze_maps(Path(store), Path(out), cfg.scaled_heatmap(), progress=progress)
