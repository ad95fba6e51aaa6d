"""Class-stratified train/val/test split of the EGD-CXR master sheet.

EGD-CXR ships no split (datasets.md 1.9). The paper stratifies 70/10/20 by class with seed 0;
a few patients have several images, so by default patients, not images, are assigned: no patient
spans two splits. A patient's stratum is the class of their first image in file order. The
authors' own assignment (``SplitConfig.method="authors"``) is a round robin over images.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from model_lib.config import SplitConfig
from model_lib.data.errors import DataError
from model_lib.data.schema import LABEL_COLUMNS

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Patients per split for a class of ``n`` patients.

    Largest remainder of ``fractions * n`` (ties go to the earlier split), so each count is
    within one of its quota. Then: train is non-empty whenever ``n >= 1``, and test whenever
    ``n >= 3``, as long as their fractions are non-zero.
    """
    quotas = [f * n for f in fractions]
    counts = [math.floor(q + 1e-9) for q in quotas]
    # Rounded remainders: 0.7 * 10 is 6.999...; order by remainder, then by split order.
    order = sorted(range(3), key=lambda k: (-round(quotas[k] - counts[k], 9), k))
    for k in order[: n - sum(counts)]:
        counts[k] += 1
    train, val, test = counts
    if fractions[0] > 0 and n >= 1 and train == 0:
        if val >= test:
            val -= 1
        else:
            test -= 1
        train += 1
    if fractions[2] > 0 and n >= 3 and test == 0:
        if train > 1:
            train -= 1
        else:
            val -= 1
        test += 1
    return train, val, test


def assign_splits(
    master: pd.DataFrame, cfg: SplitConfig, source: str | Path = "master_sheet.csv"
) -> pd.Series:
    """Split name ('train' | 'val' | 'test') per image: a Series indexed by dicom_id.

    ``master`` needs dicom_id, patient_id and the one-hot LABEL_COLUMNS; ``source`` only names
    the file in errors. Within each class, patients are ordered by patient_id, shuffled with
    ``np.random.default_rng(cfg.seed)`` (one generator, classes in order) and cut by
    :func:`split_counts`. Deterministic for a seed; the result follows master's row order.
    """
    labels = _labels(master, source)
    if cfg.method == "authors":
        return authors_splits(master["dicom_id"], labels, cfg.seed)
    first = pd.DataFrame(
        {"patient_id": master["patient_id"].to_numpy(), "label": labels}
    ).drop_duplicates("patient_id", keep="first")
    rng = np.random.default_rng(cfg.seed)
    split_of: dict[object, str] = {}
    for label in range(len(LABEL_COLUMNS)):
        patients = np.sort(first.loc[first["label"] == label, "patient_id"].to_numpy())
        patients = patients[rng.permutation(patients.size)]
        counts = split_counts(patients.size, cfg.fractions)
        bounds = np.cumsum((0, *counts))
        for name, lo, hi in zip(SPLIT_NAMES, bounds[:-1], bounds[1:], strict=True):
            split_of.update(dict.fromkeys(patients[lo:hi].tolist(), name))
    splits = [split_of[p] for p in master["patient_id"].tolist()]
    return pd.Series(splits, index=pd.Index(master["dicom_id"], name="dicom_id"), name="split")


def authors_splits(dicom_ids: pd.Series, labels: np.ndarray, seed: int) -> pd.Series:
    """The authors' assignment (``save_all`` in their ``Data/hzhu_data_raw.py``).

    Images are visited in ``torch.randperm(n)`` order under ``manual_seed(seed)`` (what their
    ``random_split(range(n), [n, 0])`` draws); the k-th image of a class (k from 1) goes to test
    when ``k % 10`` is 0 or 1, to val when it is 2, else to train. Patients may span splits.
    """
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    seen = np.zeros(len(LABEL_COLUMNS), dtype=np.int64)
    splits = np.empty(len(labels), dtype=object)
    for i in order:
        seen[labels[i]] += 1
        turn = seen[labels[i]] % 10
        splits[i] = "test" if turn <= 1 else "val" if turn == 2 else "train"
    return pd.Series(splits, index=pd.Index(dicom_ids, name="dicom_id"), name="split")


def _labels(master: pd.DataFrame, source: str | Path) -> np.ndarray:
    """Class index per row from the one-hot columns, after checking the columns are usable."""
    for column in ("dicom_id", "patient_id", *LABEL_COLUMNS):
        if column not in master.columns:
            raise DataError(source, "column missing", field=column)
    for column in ("dicom_id", "patient_id"):
        null = master[column].isna().to_numpy()
        if null.any():
            raise DataError(source, "empty", row=int(np.argmax(null)) + 1, field=column)
    duplicated = master["dicom_id"].duplicated().to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated)) + 1
        raise DataError(source, "duplicate dicom_id", row=row, field="dicom_id")
    onehot = master.loc[:, list(LABEL_COLUMNS)].to_numpy(dtype=np.float64, na_value=np.nan)
    valid = np.isin(onehot, (0.0, 1.0)).all(axis=1) & (onehot.sum(axis=1) == 1)
    if not valid.all():
        row = int(np.argmin(valid))
        raise DataError(
            source,
            f"one-hot class is {onehot[row].tolist()}; expected exactly one 1",
            row=row + 1,
            field="/".join(LABEL_COLUMNS),
        )
    return onehot.argmax(axis=1)
