from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from model_lib.data.loader import SplitArrays
from model_lib.training import load_checkpoint, run_stages, split_loaders
from tests.model_lib.training.conftest import ToyNet
from tests.model_lib.training.test_fit import Interrupt, Recorder, StopAt, same, spec


def test_run_stages_chains_from_each_best_checkpoint(
    toy: ToyNet, splits: tuple[SplitArrays, SplitArrays], tmp_path: Path
) -> None:
    stages = [
        spec(name="one", loss="ce_densenet", trains=("densenet", "densenet_head"),
             branch="densenet", max_epochs=2),
        spec(name="off", enabled=False),
        spec(name="two", max_epochs=2),
    ]  # fmt: skip
    results = run_stages(
        toy, stages, split_loaders(*splits), checkpoint_dir=tmp_path, progress=False,
        precision="fp32",
    )  # fmt: skip
    assert list(results) == ["one", "two"]
    assert not (tmp_path / "off").exists()
    one = load_checkpoint(results["one"].best_checkpoint)["model"]
    # Stage two froze the DenseNet: it still holds stage one's best weights, statistics included.
    densenet = {k: v for k, v in toy.state_dict().items() if k.startswith("densenet.")}
    assert same(densenet, {k: v for k, v in one.items() if k.startswith("densenet.")})
    assert same(toy.state_dict(), load_checkpoint(results["two"].best_checkpoint)["model"])


def test_a_killed_chain_goes_on_where_it_stopped(
    splits: tuple[SplitArrays, SplitArrays], tmp_path: Path
) -> None:
    stages = [
        spec(name="one", loss="ce_densenet", trains=("densenet", "densenet_head"),
             branch="densenet", max_epochs=2),
        spec(name="two", max_epochs=3),
    ]  # fmt: skip
    kw = {"progress": False, "precision": "fp32", "seed": 1}

    def chain(directory: Path, callbacks: list) -> tuple[dict, ToyNet]:
        torch.manual_seed(0)
        model = ToyNet()
        results = run_stages(
            model, stages, split_loaders(*splits), checkpoint_dir=directory, callbacks=callbacks,
            **kw,
        )  # fmt: skip
        return results, model

    reference, ref_model = chain(tmp_path / "a", [])
    with pytest.raises(Interrupt):
        chain(tmp_path / "b", [StopAt(1, stage="two")])
    recorder = Recorder()
    resumed, model = chain(tmp_path / "b", [recorder])
    # Stage one had finished: it only reloaded its weights; stage two went on from epoch 2.
    assert recorder.starts == [("two", 2)]
    assert resumed == {
        name: dataclasses.replace(r, best_checkpoint=tmp_path / "b" / name / "best.pt")
        for name, r in reference.items()
    }
    assert same(model.state_dict(), ref_model.state_dict())
