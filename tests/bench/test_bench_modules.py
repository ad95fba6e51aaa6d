"""Every benchmark case imports cleanly and exposes ``run()``; nothing is timed here."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import CASES


def test_the_runner_lists_every_case() -> None:
    assert set(CASES) >= {
        "bench.heatmap",
        "bench.ingest",
        "bench.loader",
        "bench.train_step",
        "bench.inference",
        "bench.gpu_step",
        "bench.pipeline",
    }


@pytest.mark.parametrize("name", CASES)
def test_case_module_exposes_run(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.run)
    assert callable(module.main)


def test_gpu_case_reports_itself_skipped_without_cuda() -> None:
    import torch

    from bench import gpu_step

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the case measures instead")
    (row,) = gpu_step.run()
    assert row["value"] is None and "skipped" in row["name"]
