from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model_lib.config import SplitConfig
from model_lib.data.errors import DataError
from model_lib.data.schema import LABEL_COLUMNS
from model_lib.data.splits import assign_splits, split_counts


def master_sheet(n_images: int, seed: int = 0, repeat_every: int = 4) -> pd.DataFrame:
    """Images with one-hot classes; every ``repeat_every``-th image reuses the previous
    image's patient (with any class, so a few patients have mixed labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n_images)
    patients, next_id = [], 10_000_000
    for i in range(n_images):
        if i and i % repeat_every == 0:
            patients.append(patients[-1])
        else:
            next_id += int(rng.integers(1, 50))
            patients.append(next_id)
    order = rng.permutation(n_images)  # file order unrelated to patient ids
    onehot = np.eye(3, dtype=np.int64)[labels]
    frame = pd.DataFrame(
        {
            "dicom_id": [f"{i:08x}-img" for i in range(n_images)],
            "patient_id": patients,
            **{name: onehot[:, k] for k, name in enumerate(LABEL_COLUMNS)},
        }
    )
    return frame.iloc[order].reset_index(drop=True)


def strata(master: pd.DataFrame) -> pd.Series:
    """Class of each patient's first image in file order (index patient_id)."""
    labels = master[list(LABEL_COLUMNS)].to_numpy().argmax(axis=1)
    return pd.Series(labels, index=master["patient_id"]).groupby(level=0, sort=False).first()


def test_patients_never_span_two_splits() -> None:
    master = master_sheet(300)
    splits = assign_splits(master, SplitConfig())
    assert list(splits.index) == list(master["dicom_id"]) and splits.name == "split"
    assert set(splits) == {"train", "val", "test"}
    per_patient = pd.Series(splits.to_numpy(), index=master["patient_id"])
    assert per_patient.groupby(level=0).nunique().max() == 1
    assert master["patient_id"].duplicated().sum() > 50  # the check above had work to do


@pytest.mark.parametrize("n_images", [37, 300, 1083])
def test_each_class_is_split_within_one_patient_of_the_fractions(n_images: int) -> None:
    cfg = SplitConfig()
    master = master_sheet(n_images, seed=n_images)
    splits = assign_splits(master, cfg)
    patient_split = (
        pd.Series(splits.to_numpy(), index=master["patient_id"]).groupby(level=0).first()
    )
    stratum = strata(master)
    for label in range(3):
        patients = stratum.index[stratum == label]
        counts = patient_split[patients].value_counts()
        for name, fraction in zip(("train", "val", "test"), cfg.fractions, strict=True):
            assert abs(counts.get(name, 0) - fraction * len(patients)) < 1, (label, name, counts)


def test_same_seed_same_split_other_seed_other_split() -> None:
    master = master_sheet(200)
    first = assign_splits(master, SplitConfig(seed=0))
    pd.testing.assert_series_equal(first, assign_splits(master.copy(), SplitConfig(seed=0)))
    assert (first != assign_splits(master, SplitConfig(seed=1))).any()


def test_result_does_not_depend_on_patient_id_row_order_within_a_class() -> None:
    # Patients are sorted before shuffling: permuting rows of single-image patients that keep
    # their first-image class gives the same patient -> split mapping.
    master = master_sheet(120, repeat_every=10_000)
    shuffled = master.sample(frac=1.0, random_state=3).reset_index(drop=True)
    a = assign_splits(master, SplitConfig()).sort_index()
    b = assign_splits(shuffled, SplitConfig()).sort_index()
    pd.testing.assert_series_equal(a, b)


@pytest.mark.parametrize("n_images", [1, 2, 3, 5, 10])
def test_tiny_sheets_split_without_crashing(n_images: int) -> None:
    master = master_sheet(n_images, seed=n_images, repeat_every=10_000)
    splits = assign_splits(master, SplitConfig())
    assert len(splits) == n_images
    assert (splits == "train").any()
    stratum = strata(master)
    patient_split = pd.Series(splits.to_numpy(), index=master["patient_id"])
    for label in range(3):
        patients = stratum.index[stratum == label]
        if len(patients) >= 3:
            assert (patient_split[patients] == "test").any()


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (0, (0, 0, 0)),
        (1, (1, 0, 0)),
        (2, (2, 0, 0)),
        (3, (2, 0, 1)),
        (4, (3, 0, 1)),
        (7, (5, 1, 1)),
        (10, (7, 1, 2)),
        (360, (252, 36, 72)),
        (363, (254, 36, 73)),
    ],
)
def test_split_counts_largest_remainder(n: int, expected: tuple[int, int, int]) -> None:
    assert split_counts(n, (0.7, 0.1, 0.2)) == expected


def test_split_counts_keep_train_and_test_non_empty_for_odd_fractions() -> None:
    assert split_counts(3, (0.3, 0.4, 0.3)) == (1, 1, 1)
    assert split_counts(2, (0.1, 0.8, 0.1)) == (1, 1, 0)
    assert split_counts(3, (0.2, 0.7, 0.1))[2] == 1
    assert split_counts(5, (1.0, 0.0, 0.0)) == (5, 0, 0)


def _with(master: pd.DataFrame, row: int, **values: object) -> pd.DataFrame:
    master = master.astype(object)
    for column, value in values.items():
        master.loc[row, column] = value
    return master


BAD_SHEETS = {
    "two classes": (lambda m: _with(m, 4, Normal=1, CHF=1, pneumonia=0), 5, "Normal/CHF"),
    "no class": (lambda m: _with(m, 2, Normal=0, CHF=0, pneumonia=0), 3, "Normal/CHF"),
    "empty class": (lambda m: _with(m, 6, CHF=np.nan), 7, "Normal/CHF"),
    "missing patient": (lambda m: _with(m, 1, patient_id=None), 2, "patient_id"),
    "duplicate id": (lambda m: _with(m, 8, dicom_id=m.loc[0, "dicom_id"]), 9, "dicom_id"),
    "missing column": (lambda m: m.drop(columns="pneumonia"), None, "pneumonia"),
}


@pytest.mark.parametrize("case", list(BAD_SHEETS))
def test_bad_sheet_names_the_record_and_field(case: str) -> None:
    corrupt, row, field = BAD_SHEETS[case]
    with pytest.raises(DataError) as info:
        assign_splits(corrupt(master_sheet(12)), SplitConfig(), source="sheet.csv")
    assert info.value.file == "sheet.csv" and info.value.row == row
    assert info.value.field is not None and info.value.field.startswith(field)


def authors_assignment(master: pd.DataFrame, seed: int = 0) -> dict[str, str]:
    """Their ``save_all``: ``random_split(range(n), [n, 0])`` under ``manual_seed(seed)``, then
    per class ``counter % 10``: 0-1 test, 2 valid, else train."""
    import torch

    order, _ = torch.utils.data.random_split(
        range(len(master)), [len(master), 0], generator=torch.Generator().manual_seed(seed)
    )
    counter = dict.fromkeys(range(3), 0)
    out = {}
    for i in order:
        row = master.iloc[i]
        y = [int(row[c]) for c in LABEL_COLUMNS].index(1)
        counter[y] += 1
        select = counter[y] % 10
        out[row["dicom_id"]] = "test" if select <= 1 else "val" if select == 2 else "train"
    return out


@pytest.mark.parametrize("seed", [0, 3])
def test_authors_method_is_their_round_robin(seed: int) -> None:
    master = master_sheet(157, seed=seed)
    ours = assign_splits(master, SplitConfig(method="authors", seed=seed))
    assert ours.to_dict() == authors_assignment(master, seed)
    assert list(ours.index) == master["dicom_id"].tolist()
    counts = ours.value_counts()
    assert abs(counts["train"] / len(master) - 0.7) < 0.05
    # Images, not patients: with repeated patients some span two splits.
    spans = master.assign(split=ours.to_numpy()).groupby("patient_id")["split"].nunique()
    assert (spans > 1).any()


def test_authors_method_has_fixed_fractions() -> None:
    with pytest.raises(ValueError, match="method 'patients'"):
        SplitConfig(method="authors", fractions=(0.8, 0.1, 0.1))
