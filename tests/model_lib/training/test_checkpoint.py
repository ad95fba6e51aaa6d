from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model_lib.training.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_model_weights,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def draws() -> tuple[float, float, float, float]:
    return random.random(), float(np.random.rand()), float(np.random.randn()), float(torch.rand(()))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    seed_everything(4)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    save_checkpoint(tmp_path / "c.pt", {"rng": rng_state()})
    expected = draws()
    draws()
    set_rng_state(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert draws() == expected


def test_seed_everything_is_reproducible() -> None:
    seed_everything(11)
    first = draws()
    seed_everything(11)
    assert draws() == first


def test_save_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"x": torch.arange(3)})
    with pytest.raises((AttributeError, pickle.PicklingError), match="pickle"):
        save_checkpoint(path, {"x": lambda: 0})
    # The failed write left the previous checkpoint whole and no temporary file behind.
    assert torch.equal(load_checkpoint(path)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pt: no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt: not a readable checkpoint"):
        load_checkpoint(garbage)
    old = tmp_path / "old.pt"
    torch.save({"model": {}}, old)
    with pytest.raises(
        ValueError, match=rf"old\.pt: checkpoint format_version None, expected {FORMAT_VERSION}"
    ):
        load_checkpoint(old)


def test_arbitrary_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format_version": FORMAT_VERSION, "obj": Path("x")}, path)
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable checkpoint"):
        load_checkpoint(path)


def test_load_model_weights(tmp_path: Path) -> None:
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    save_checkpoint(tmp_path / "w.pt", {"model": source.state_dict()})
    load_model_weights(target, tmp_path / "w.pt")
    assert torch.equal(target.weight, source.weight)
    with pytest.raises(ValueError, match=r"w\.pt: weights do not fit the model"):
        load_model_weights(nn.Linear(4, 2), tmp_path / "w.pt")
    save_checkpoint(tmp_path / "n.pt", {"epoch": 1})
    with pytest.raises(ValueError, match=r"n\.pt: checkpoint has no 'model' weights"):
        load_model_weights(target, tmp_path / "n.pt")
