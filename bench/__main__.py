"""`python -m bench`: run every benchmark, print a table, write bench/results.json.

Each case module exposes ``run() -> list[dict]`` with keys name, value, unit, baseline, ratio,
target, machine, date: the ratio is always against a baseline measured in the same run.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

CASES = (
    "bench.heatmap",
    "bench.ingest",
    "bench.loader",
    "bench.train_step",
    "bench.inference",
    "bench.gpu_step",
    "bench.pipeline",
)
RESULTS = Path(__file__).with_name("results.json")


def main(names: list[str]) -> int:
    rows = []
    for module_name in names or CASES:
        rows.extend(importlib.import_module(module_name).run())
    print(f"\n{'case':46} {'value':>14} {'baseline':>12} {'ratio':>9} {'target':>8}")
    for r in rows:
        value = "skipped" if r["value"] is None else f"{r['value']:.6g} {r['unit']}"
        print(f"{r['name']:46} {value:>14} {_num(r['baseline']):>12} {_num(r['ratio']):>9} "
              f"{_num(r['target']):>8}")  # fmt: skip
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS}")
    return 0


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
