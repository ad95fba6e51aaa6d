"""Heatmaps step: gaze events of the packed store -> ground-truth maps at the target size."""

from __future__ import annotations

import logging
from pathlib import Path

from kfp.dsl import Dataset, Input, Output

from components.kfp_step import step_component
from model_lib.config import DataConfig
from model_lib.data.gaze_maps import GazeMapsSummary, write_gaze_maps

log = logging.getLogger(__name__)


def run_heatmaps(
    store: Path, out: Path, cfg: DataConfig, *, progress: bool = True
) -> GazeMapsSummary:
    """Write one map per image; sigma is scaled to the images' size (``cfg.native_scale``).

    Gaze events outside their image (off screen, on the display padding) are left out of the
    maps; how many is logged.
    """
    summary = write_gaze_maps(Path(store), Path(out), cfg.scaled_heatmap(), progress=progress)
    log.info("heatmaps: %s", summary.dropped.describe(summary.source))
    return summary


def heatmaps_step(
    store: Path, preset: str, overrides: list[str], out: Path, data_remote: str = ""
) -> dict[str, int]:
    """The heatmaps pipeline step, with the data config of the preset; maps per split. The
    store may be a pointer, and with ``data_remote`` the maps become one too
    (:mod:`components.data_transfer`)."""
    import tempfile

    from components.data_transfer import materialize, publish
    from model_lib.presets import get_preset

    cfg = get_preset(preset, overrides)
    local_store = materialize(Path(store))
    if not data_remote:
        return dict(run_heatmaps(local_store, Path(out), cfg.data, progress=False).split_counts)
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-maps-") as tmp:
        summary = run_heatmaps(local_store, Path(tmp) / "maps", cfg.data, progress=False)
        publish(summary.out_dir, data_remote, Path(out))
    return dict(summary.split_counts)


@step_component
def heatmaps(
    store: Input[Dataset], preset: str, overrides: list, data_remote: str, maps: Output[Dataset]
):
    """Ground-truth gaze maps at the model's input size."""
    from components.heatmaps import heatmaps_step

    maps.metadata.update(heatmaps_step(store.path, preset, overrides, maps.path, data_remote))
