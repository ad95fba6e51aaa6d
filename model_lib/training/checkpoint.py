"""Checkpoints: everything a stage needs to resume exactly, saved atomically, read safely.

A checkpoint is a dict of tensors and plain Python values (``dict``, ``list``, ``str``, numbers,
``None``), so ``torch.load(..., weights_only=True)`` reads it without unpickling arbitrary
objects. The random-number states of Python, numpy and torch are stored the same way.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global generators' states as tensors and plain values (see :func:`set_rng_state`)."""
    version, mt, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"].tolist()), py["gauss"]))
    npy = state["numpy"]
    key = npy["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, npy["pos"], npy["has_gauss"], npy["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus the format version) to ``path`` atomically.

    The bytes go to a hidden temporary file beside ``path``, are flushed to disk, and the file is
    renamed over ``path``: a reader sees the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a checkpoint of this format (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint ({err})") from err
    version = payload.get("format_version") if isinstance(payload, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format_version {version!r}, expected {FORMAT_VERSION}"
        )
    return payload


def load_model_weights(model: nn.Module, path: Path) -> dict[str, Any]:
    """Load a checkpoint's ``model`` weights into ``model`` (strict); returns the checkpoint.

    Raises:
        ValueError: the checkpoint has no model weights, or they do not fit ``model`` (the
            message names the file).
    """
    payload = load_checkpoint(path)
    if "model" not in payload:
        raise ValueError(f"{path}: checkpoint has no 'model' weights")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the model: {err}") from err
    return payload
