"""The ci preset end to end on the real network: every stage, the joint one included."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model_lib.data.loader import BatchLoader
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training import load_model_weights, predict, run_stages, split_loaders
from tests.model_lib.training.conftest import make_split


@pytest.mark.slow
def test_ci_preset_runs_every_stage_on_the_real_model(tmp_path: Path) -> None:
    config = get_preset("ci", ["stages.s3j.enabled=true"])
    hw = config.model.input_hw
    train, val = make_split(16, seed=1, hw=hw), make_split(9, seed=2, hw=hw)
    torch.manual_seed(config.seed)
    model = build_model(config.model)
    results = run_stages(
        model, config.enabled_stages, split_loaders(train, val, seed=config.seed),
        checkpoint_dir=tmp_path, progress=False, precision="fp32", seed=config.seed,
    )  # fmt: skip
    assert list(results) == ["s1a", "s1b", "s2", "s3", "s3j"]
    for name, result in results.items():
        assert len(result.history) == config.stage(name).max_epochs
        assert all(math.isfinite(v) for m in result.history for v in m.values()), name
    assert "val_cc" in results["s2"].final_metrics
    assert "val_auc_macro" in results["s3"].final_metrics
    assert "sigma_c" in results["s3j"].final_metrics

    # The last best checkpoint is a complete model: a fresh build predicts like the trained one.
    fresh = build_model(config.model)
    load_model_weights(fresh, results["s3j"].best_checkpoint)
    loader = BatchLoader(val, 4)
    ours, theirs = predict(model, loader), predict(fresh, loader)
    np.testing.assert_allclose(ours["probs"], theirs["probs"], rtol=1e-5, atol=1e-6)
    assert ours["saliency"].shape == (len(val), *hw)
