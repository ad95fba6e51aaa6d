"""Gaze-map benchmark: target-grid ``gaze_heatmap`` against the paper's native-resolution recipe.

Both run on the same simulated readings (about 1,400 raw gaze samples) of a portrait 3056x2544
and a landscape 2544x3056 image (the latter needs the fit into the 3200x2560 canvas), each on
one thread. Per image, the median over repeats is reported; the fast map's Pearson CC with the
native map checks that the speed costs no fidelity.

``run()`` returns rows for the bench runner: one per case (value: fast ms, baseline: native ms,
target: the minimum ratio) and one for the smallest CC (target: its minimum).
Run: ``python -m bench.heatmap``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date

import cv2
import numpy as np
from threadpoolctl import threadpool_limits

from model_lib.data.heatmap import gaze_heatmap
from model_lib.data.heatmap_reference import native_heatmap

CASES: dict[str, tuple[int, int]] = {
    "portrait 3056x2544": (3056, 2544),
    "landscape 2544x3056": (2544, 3056),
}
N_SAMPLES = 1400
NATIVE_REPEATS = 3
FAST_REPEATS = 200
TARGET_RATIO = 500.0
TARGET_CC = 0.999


def simulated_reading(native_hw: tuple[int, int], n: int, seed: int) -> np.ndarray:
    """(n, 2) integer gaze samples: fixations of 8-30 samples with tremor, wandering over the
    central image, and about 3% of samples off the image (-2, as in the released files)."""
    rng = np.random.default_rng(seed)
    h, w = native_hw
    low, high = np.array([0.1 * w, 0.1 * h]), np.array([0.9 * w, 0.9 * h])
    centre = (low + high) / 2
    fixations = []
    total = 0
    while total < n:
        centre = np.clip(centre + rng.normal(0, 0.12 * min(h, w), 2), low, high)
        size = int(rng.integers(8, 31))
        fixations.append(centre + rng.normal(0, 12.0, (size, 2)))
        total += size
    points = np.floor(np.concatenate(fixations)[:n])
    points[rng.random(n) < 0.03] = -2
    return points


def _median_ms(fn: Callable[[], np.ndarray], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def measure() -> list[dict[str, float | str]]:
    """Per case: native and fast median ms, their ratio and the CC of the two maps."""
    results = []
    cv_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            for i, (name, native_hw) in enumerate(CASES.items()):
                points = simulated_reading(native_hw, N_SAMPLES, seed=i)
                native = native_heatmap(points, native_hw)
                fast = gaze_heatmap(points, native_hw)  # also builds the cached blur matrices
                native_ms = _median_ms(
                    lambda p=points, s=native_hw: native_heatmap(p, s), NATIVE_REPEATS
                )
                fast_ms = _median_ms(lambda p=points, s=native_hw: gaze_heatmap(p, s), FAST_REPEATS)
                results.append(
                    {
                        "case": name,
                        "native_ms": native_ms,
                        "fast_ms": fast_ms,
                        "ratio": native_ms / fast_ms,
                        "cc": float(np.corrcoef(native.ravel(), fast.ravel())[0, 1]),
                    }
                )
    finally:
        cv2.setNumThreads(cv_threads)
    return results


def run() -> list[dict]:
    """Rows for the bench runner: name, value, unit, baseline, ratio, target, machine, date."""
    results = measure()
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus, 1 thread"
    common = {"machine": " ".join(machine.split()), "date": date.today().isoformat()}
    rows = [
        {
            "name": f"gaze heatmap 320x256, {r['case']}",
            "value": r["fast_ms"],
            "unit": "ms",
            "baseline": r["native_ms"],
            "ratio": r["ratio"],
            "target": TARGET_RATIO,
            **common,
        }
        for r in results
    ]
    rows.append(
        {
            "name": "gaze heatmap min Pearson CC vs native",
            "value": min(r["cc"] for r in results),
            "unit": "CC",
            "baseline": None,
            "ratio": None,
            "target": TARGET_CC,
            **common,
        }
    )
    return rows


def main() -> None:
    results = measure()
    print(f"{'case':<22}{'native ms':>11}{'fast ms':>10}{'ratio':>9}{'CC':>10}")
    for r in results:
        print(
            f"{r['case']:<22}{r['native_ms']:>11.1f}{r['fast_ms']:>10.3f}"
            f"{r['ratio']:>8.0f}x{r['cc']:>10.6f}"
        )
    worst_ratio = min(r["ratio"] for r in results)
    worst_cc = min(r["cc"] for r in results)
    print(
        f"min ratio {worst_ratio:.0f}x (target >= {TARGET_RATIO:.0f}x), "
        f"min CC {worst_cc:.6f} (target >= {TARGET_CC})"
    )


if __name__ == "__main__":
    main()
