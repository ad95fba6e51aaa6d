"""Loader benchmark: can the packed-store ``BatchLoader`` feed training fast enough?

For the ``demo`` and ``paper`` presets, a packed store of random images and gaze points, plus
random gaze maps, is written into a temporary folder at the preset's geometry. The loader's
throughput (shuffled batches of the stage's batch size, images already in memory as in
``fit_stage``) is compared with what training consumes: the images/s of real training steps of
the preset's model. The loader must keep up with the stage that eats images fastest, which is one
of the two cheapest steps per image, depending on the preset: ``s1b`` (DenseNet branch only:
forward, cross-entropy, backward, Adam) or ``s3`` (the whole forward pass, backward through the
small fusion classifier only). Both are timed; the faster one is the baseline, and the loader
runs at its batch size. The precision is the trainer's default ("auto"); both sides run on the
same torch threads (``BENCH_THREADS``, default 1, see ``bench.train_step.bench_threads``).

A paper-size step takes seconds per image, so the paper preset's steps run at batch 2 (its stage
batches are 6-16) and the rate is per image; the row name says so. Loading and training share the
process (no worker processes), so headroom h means loading costs about 1/h of an epoch.

``run()`` returns one row per preset: value the loader's images/s, baseline the training step's,
ratio the headroom, target its minimum. Run: ``python -m bench.loader``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.train_step import Variant, bench_threads, machine_fields, time_steps
from model_lib.config import GeometryConfig
from model_lib.data.gaze_maps import MAPS_FILE
from model_lib.data.geometry import CanvasTransform
from model_lib.data.loader import BatchLoader, open_split
from model_lib.data.store import StoreWriter
from model_lib.presets import get_preset
from model_lib.training.precision import resolve_precision

PRESETS: dict[str, dict[str, int]] = {
    # images in the store; batch of the timed training step (0: the stage's own batch size)
    "demo": {"images": 512, "step_batch": 0},
    "paper": {"images": 256, "step_batch": 2},
}
STAGES = ("s1b", "s3")
NATIVE_HW = (3056, 2544)
POINTS_PER_IMAGE = 200
MIN_LOAD_SECONDS = 1.0
TARGET_HEADROOM = 5.0


def write_store(root: Path, geometry: GeometryConfig, n: int, seed: int = 0) -> tuple[Path, Path]:
    """A packed store with one ``train`` split of ``n`` random images and gaze points, and random
    gaze maps beside it; returns (store dir, maps dir)."""
    rng = np.random.default_rng(seed)
    h, w = geometry.target_hw
    transform = CanvasTransform.build(NATIVE_HW, geometry.target_hw, geometry.pad_to).to_dict()
    store_dir, maps_dir = root / "store", root / "maps"
    with StoreWriter(store_dir, geometry, {"train": n}) as writer:
        for i in range(n):
            record = {
                "dicom_id": f"img{i:05d}",
                "patient_id": 1000 + i,
                "study_id": 5000 + i,
                "label": int(rng.integers(0, 3)),
                **transform,
                "source_sha256": "0" * 64,
            }
            points = pd.DataFrame(
                {
                    "source": "gaze",
                    "x": rng.uniform(0, NATIVE_HW[1], POINTS_PER_IMAGE),
                    "y": rng.uniform(0, NATIVE_HW[0], POINTS_PER_IMAGE),
                    "duration": np.nan,
                    "time": np.arange(POINTS_PER_IMAGE) / 30.0,
                }
            )
            writer.add("train", rng.random((h, w), dtype=np.float32), record, points)
    (maps_dir / "train").mkdir(parents=True)
    maps = rng.random((n, h, w), dtype=np.float32).astype(np.float16)
    np.save(maps_dir / "train" / MAPS_FILE, maps)
    return store_dir, maps_dir


def loader_images_per_s(store_dir: Path, maps_dir: Path, batch: int) -> float:
    """Images/s of shuffled epochs of ``BatchLoader`` over the split, for at least
    ``MIN_LOAD_SECONDS`` (after one warm-up epoch)."""
    loader = BatchLoader(open_split(store_dir, maps_dir, "train"), batch, shuffle=True)
    for _ in loader:
        pass
    images, epoch = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < MIN_LOAD_SECONDS:
        epoch += 1
        loader.set_epoch(epoch)
        for b in loader:
            images += len(b["label"])
    return images / (time.perf_counter() - start)


def measure(preset: str) -> dict[str, float | int | str]:
    """Loader images/s against the fastest-consuming training step's images/s for one preset."""
    cfg = get_preset(preset)
    plan = resolve_precision("auto", "cpu")
    with bench_threads() as threads:
        steps = {}
        for name in STAGES:
            spec = cfg.stage(name)
            batch = PRESETS[preset]["step_batch"] or spec.batch_size
            variant = Variant(f"{preset} {name} {plan.name}", plan)
            (steps[name],) = time_steps(
                cfg.model, spec, batch, [(variant, 1, 2)], label="loader consumption: "
            )
        stage = max(STAGES, key=lambda name: steps[name].images_per_s)
        loader_batch = cfg.stage(stage).batch_size
        with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
            store_dir, maps_dir = write_store(
                Path(tmp), cfg.data.geometry, PRESETS[preset]["images"]
            )
            load = loader_images_per_s(store_dir, maps_dir, loader_batch)
        print(f"  loader {preset} b{loader_batch}: {load:.0f} images/s", flush=True)
    return {
        "preset": preset,
        "hw": "x".join(map(str, cfg.data.geometry.target_hw)),
        "stage": stage,
        "loader_batch": loader_batch,
        "step_batch": steps[stage].batch,
        "loader": load,
        "step": steps[stage].images_per_s,
        "threads": threads,
    }


def _row(r: dict) -> dict:
    extrapolated = (
        f", step at b{r['step_batch']} per image" if r["step_batch"] != r["loader_batch"] else ""
    )
    where = f"{r['preset']} {r['hw']} b{r['loader_batch']}"
    return {
        "name": f"loader {where} vs {r['stage']} step{extrapolated}",
        "value": r["loader"],
        "unit": "images/s",
        "baseline": r["step"],
        "ratio": r["loader"] / r["step"],
        "target": TARGET_HEADROOM,
        **machine_fields(r["threads"]),
    }


def run() -> list[dict]:
    """Rows for the bench runner: name, value, unit, baseline, ratio, target, machine, date."""
    print("bench.loader: packed-store loader vs training consumption (demo, paper)", flush=True)
    return [_row(measure(preset)) for preset in PRESETS]


def main() -> None:
    for r in run():
        print(f"{r['name']:<62} {r['value']:>9.0f} vs {r['baseline']:>7.2f} images/s, "
              f"headroom {r['ratio']:.0f}x (target >= {r['target']:.0f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
