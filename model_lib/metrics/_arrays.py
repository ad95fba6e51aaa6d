"""Input conversion shared by the metric modules: torch tensors or array-likes -> float64 numpy."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """``x`` as a numpy array of ``dtype``; a tensor is detached and moved to the CPU first.

    Raises:
        ValueError: a floating array holds NaN or inf (``name`` says which argument).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # bfloat16 has no numpy equivalent; float64 holds it exactly.
        x = x.double().numpy() if x.is_floating_point() else x.numpy()
    arr = np.asarray(x, dtype=dtype)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def to_labels(x: Any, name: str = "labels") -> np.ndarray:
    """Integer class labels (N,) as int64; float labels must be whole numbers."""
    arr = to_numpy(x, name, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (N,), got {arr.shape}")
    if not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{name}: expected integer class indices")
    return arr.astype(np.int64)
