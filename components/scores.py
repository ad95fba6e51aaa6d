"""Per-image scores of one model on the test split: what the promotion gate compares.

Champion and challenger are scored on the same images, so the gate can pair them image by image
(a paired t-test on CC, a paired bootstrap on AUC). :class:`Scores` carries a fingerprint of the
images it was computed on so that a comparison of different splits fails instead of passing.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from model_lib.metrics import accuracy, cc, macro_auc


class Predictor(Protocol):
    """A loaded pyfunc (or anything with its ``predict``): images (B, 1, H, W) float32 in ->
    ``{"probabilities": (B, C), "saliency": (B, H, W)}``."""

    def predict(self, data: np.ndarray) -> dict[str, np.ndarray]: ...


def images_fingerprint(images: np.ndarray) -> str:
    """sha256 of the images' shape and float32 bytes: equal for the same test split."""
    arr = np.ascontiguousarray(images, dtype=np.float32)
    digest = hashlib.sha256(repr(arr.shape).encode())
    digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


@dataclass(frozen=True)
class Scores:
    """One model on one test split, image by image.

    Attributes:
        probabilities: (N, C) class probabilities.
        labels: (N,) integer labels.
        cc: (N,) Pearson CC of the predicted and ground-truth map of each image.
        images_sha256: :func:`images_fingerprint` of the images, or "" if unknown.
    """

    probabilities: np.ndarray
    labels: np.ndarray
    cc: np.ndarray
    images_sha256: str = ""

    def __post_init__(self) -> None:
        p, y, c = (np.asarray(a) for a in (self.probabilities, self.labels, self.cc))
        if p.ndim != 2 or y.shape != (len(p),) or c.shape != (len(p),) or len(p) < 2:
            raise ValueError(
                "scores: expected probabilities (N, C), labels (N,) and cc (N,) with N >= 2, got "
                f"{p.shape}, {y.shape}, {c.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
            raise ValueError(f"scores: labels must be integers in [0, {p.shape[1]}), got {y}")
        object.__setattr__(self, "probabilities", p)
        object.__setattr__(self, "labels", y)
        object.__setattr__(self, "cc", c)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def finite(self) -> bool:
        """False for a diverged model (NaN or inf anywhere)."""
        return bool(np.isfinite(self.probabilities).all() and np.isfinite(self.cc).all())

    def summary(self) -> dict[str, float]:
        """``auc_macro``, ``cc_mean``, ``accuracy`` and ``n``; the AUC is NaN when a class is
        missing from the labels or the probabilities are not finite."""
        every_class = np.unique(self.labels).size == self.probabilities.shape[1]
        ok = self.finite
        return {
            "auc_macro": macro_auc(self.probabilities, self.labels)
            if ok and every_class
            else float("nan"),
            "cc_mean": float(np.mean(self.cc)),
            "accuracy": accuracy(self.probabilities, self.labels) if ok else float("nan"),
            "n": float(self.n),
        }

    def save(self, path: Path) -> None:
        """Write an ``.npz`` atomically (temporary file beside it, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    probabilities=self.probabilities,
                    labels=self.labels,
                    cc=self.cc,
                    images_sha256=np.array(self.images_sha256),
                )
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: Path) -> Scores:
        """Read what :meth:`save` wrote (no pickles).

        Raises:
            ValueError: the file lacks an array or holds inconsistent ones (naming the file).
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                return cls(
                    probabilities=data["probabilities"],
                    labels=data["labels"],
                    cc=data["cc"],
                    images_sha256=str(data["images_sha256"]),
                )
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: not a scores file: {err}") from err


def scores_for_model(
    model: Predictor,
    images: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 32,
) -> Scores:
    """Score ``model`` on a test split, ``batch_size`` images per ``predict`` call.

    Args:
        model: a loaded pyfunc (see :class:`Predictor`).
        images: (N, 1, H, W) preprocessed images in [0, 1] (cast to float32).
        maps: (N, H, W) ground-truth gaze maps.
        labels: (N,) integer labels.

    Returns:
        :class:`Scores` with the images' fingerprint.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if images.ndim != 4 or images.shape[1] != 1 or maps.shape != (len(images), *images.shape[2:]):
        raise ValueError(
            f"images (N, 1, H, W) and maps (N, H, W) must match, got {images.shape}, {maps.shape}"
        )
    probs, ccs = [], []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)
        out = model.predict(batch)
        probs.append(np.asarray(out["probabilities"]))
        ccs.append(cc(out["saliency"], maps[start : start + batch_size]))
    return Scores(
        probabilities=np.concatenate(probs),
        labels=np.asarray(labels),
        cc=np.concatenate(ccs),
        images_sha256=images_fingerprint(images),
    )
