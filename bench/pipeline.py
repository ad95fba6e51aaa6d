"""Pipeline benchmark: wall time of the `ci`-preset pipeline in kfp.local, then of a second
identical run with caching on.

Both runs use a small synthetic release (24 images at 1/10 scale) written to a temporary folder,
an embedded MLflow store there, and the kfp.local cache. The ratio reported is first / second
(how many times faster the second run is); the target asks it to take at most 10% of the first.
The second run's `open_run` finds the version the first registered from the same data content,
code commit, preset and overrides, and the run stops there (`retrain` would train anyway); ingest
and heatmaps, pure functions of the data, are cacheable besides. From a checkout with
uncommitted changes the code version is "+dirty" and nothing is skipped: run it from a clean
checkout (`make bench` in a fresh clone), as the case prints.

Run: ``python -m bench.pipeline``.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

TARGET_FRACTION = 0.10


def run() -> list[dict]:
    from model_lib.data.synth import generate_dataset
    from pipelines.local_run import run_local

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = Path(tmp)
        generate_dataset(root / "raw", n_images=24, seed=3, scale=0.1)
        seconds = []
        for attempt in ("first run", "cached rerun"):
            start = time.perf_counter()
            summary = run_local(
                root / "raw",
                preset="ci",
                tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                pipeline_root=root / "outputs",
                cache=True,
            )
            seconds.append(time.perf_counter() - start)
            found = f", found version {summary.trained_as[0]}" if summary.trained_as else ""
            print(f"  ci pipeline {attempt}: {seconds[-1]:.0f} s ({summary.pipeline_run_name}"
                  f"{found})", flush=True)  # fmt: skip
    first, second = seconds
    return [
        {
            "name": "pipeline ci preset: cached rerun vs first run (wall s)",
            "value": second,
            "unit": "s",
            "baseline": first,
            "ratio": first / second,
            "target": 1 / TARGET_FRACTION,
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
            "date": date.today().isoformat(),
        }
    ]


def main() -> None:
    (row,) = run()
    print(f"{row['name']}: {row['value']:.0f} s vs {row['baseline']:.0f} s "
          f"({row['value'] / row['baseline']:.0%} of the first run)")  # fmt: skip


if __name__ == "__main__":
    main()
