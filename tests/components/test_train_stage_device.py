"""The training step's device: a GPU task that sees no GPU fails at once, a local run trains
on what it has."""

from __future__ import annotations

import pytest
import torch

from components.train_stage import REQUIRE_GPU_ENV, training_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("value", ["true", "1"])
def test_a_gpu_task_without_a_gpu_fails_naming_the_cause(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REQUIRE_GPU_ENV, value)
    with pytest.raises(RuntimeError, match=r"asked for a GPU but torch .* sees none.*driver"):
        training_device()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("value", [None, "false", ""])
def test_without_the_requirement_the_cpu_trains(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(REQUIRE_GPU_ENV, raising=False)
    else:
        monkeypatch.setenv(REQUIRE_GPU_ENV, value)
    assert training_device() == "cpu"
