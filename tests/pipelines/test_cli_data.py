"""The data commands end to end: synth -> ingest -> heatmaps, and every bad input case.

Each bad case must exit non-zero, name the file and the record or field, and leave nothing
where the store would have been.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from model_lib.data.store import PackedStore
from pipelines.cli import app

pytestmark = pytest.mark.integration

runner = CliRunner()


def write_params(path: Path) -> Path:
    path.write_text(
        "data:\n  native_scale: 0.1\n  geometry:\n    target_hw: [80, 64]\n", encoding="utf-8"
    )
    return path


def ingest(raw: Path, out: Path, params: Path):
    return runner.invoke(
        app,
        ["ingest", "--egd-root", str(raw / "egd-cxr"), "--images-root", str(raw / "mimic-cxr"),
         "--out", str(out), "--params", str(params), "--workers", "1"],
    )  # fmt: skip


def read_text_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def edit_csv(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    edit(read_text_csv(path)).to_csv(path, index=False)


@pytest.fixture
def release(tiny_release: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "raw"
    shutil.copytree(tiny_release, copy)
    return copy


@pytest.fixture
def params(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.yaml")


def test_synth_ingest_heatmaps(tmp_path: Path, params: Path) -> None:
    raw = tmp_path / "raw"
    result = runner.invoke(
        app, ["synth", "--out", str(raw), "--n-images", "12", "--seed", "5", "--scale", "0.1"]
    )
    assert result.exit_code == 0, result.output
    store_dir = tmp_path / "store"
    result = ingest(raw, store_dir, params)
    assert result.exit_code == 0, result.output
    assert (store_dir / "validation.html").is_file() and (store_dir / "validation.json").is_file()
    store = PackedStore.open(store_dir)
    manifest = pd.read_parquet(store_dir / "manifest.parquet")
    assert len(manifest) == 12 and manifest["dicom_id"].is_unique
    assert set(manifest["split"]) <= {"train", "val", "test"}
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    train = store.split("train")
    assert train.images.shape[1:] == (80, 64)

    maps_dir = tmp_path / "maps"
    result = runner.invoke(
        app,
        ["heatmaps", "--store", str(store_dir), "--out", str(maps_dir), "--params", str(params)],
    )
    assert result.exit_code == 0, result.output
    maps = np.load(maps_dir / "train" / "maps.npy")
    assert maps.shape == (len(train), 80, 64)
    assert np.allclose(maps.reshape(len(train), -1).max(axis=1), 1.0, atol=1e-3)


def _drop_file(raw: Path) -> None:
    (raw / "egd-cxr" / "fixations.csv").unlink()


def _drop_column(raw: Path) -> None:
    edit_csv(raw / "egd-cxr" / "fixations.csv", lambda df: df.drop(columns=["FPOGD"]))


def _two_labels(raw: Path) -> None:
    def edit(df):
        df.loc[2, ["Normal", "CHF", "pneumonia"]] = ["1", "1", "0"]
        return df

    edit_csv(raw / "egd-cxr" / "master_sheet.csv", edit)


def _duplicate_id(raw: Path) -> None:
    edit_csv(raw / "egd-cxr" / "master_sheet.csv", lambda df: pd.concat([df, df.iloc[[1]]]))


def _unknown_gaze_id(raw: Path) -> None:
    def edit(df):
        df.loc[df.index[:5], "DICOM_ID"] = "0" * 8 + "-ffffffff" * 4
        return df

    edit_csv(raw / "egd-cxr" / "eye_gaze.csv", edit)


def _time_backwards(raw: Path) -> None:
    def edit(df):
        image = df[df["DICOM_ID"].str.len() == 44]["DICOM_ID"].iloc[0]
        rows = df.index[df["DICOM_ID"] == image][5:7]
        df.loc[rows, "Time (in secs)"] = df.loc[rows[::-1], "Time (in secs)"].to_numpy()
        return df

    edit_csv(raw / "egd-cxr" / "fixations.csv", edit)


def _truncated_dicom(raw: Path) -> None:
    dcm = sorted((raw / "mimic-cxr").rglob("*.dcm"))[0]
    dcm.write_bytes(dcm.read_bytes()[: dcm.stat().st_size // 2])


def _pads_mismatch(raw: Path) -> None:
    def edit(df):
        df.loc[3, "image_left_pad"] = str(int(df.loc[3, "image_left_pad"]) + 40)
        return df

    edit_csv(raw / "egd-cxr" / "master_sheet.csv", edit)


def _no_gaze(raw: Path) -> None:
    master = read_text_csv(raw / "egd-cxr" / "master_sheet.csv")
    victim = master["dicom_id"].iloc[4]
    for name in ("fixations.csv", "eye_gaze.csv"):
        edit_csv(raw / "egd-cxr" / name, lambda df: df[df["DICOM_ID"] != victim])


def _nan_coordinates(raw: Path) -> None:
    def edit(df):
        df.loc[df.index[10:13], "X_ORIGINAL"] = ""
        return df

    edit_csv(raw / "egd-cxr" / "eye_gaze.csv", edit)


BAD_CASES = {
    "missing file": (_drop_file, ["fixations.csv", "not found"]),
    "missing column": (_drop_column, ["fixations.csv", "FPOGD"]),
    "not one-hot": (_two_labels, ["master_sheet.csv", "record 3"]),
    "duplicate dicom_id": (_duplicate_id, ["master_sheet.csv", "dicom_id"]),
    "unknown gaze id": (_unknown_gaze_id, ["eye_gaze.csv", "DICOM_ID"]),
    "time backwards": (_time_backwards, ["fixations.csv", "Time"]),
    "truncated dicom": (_truncated_dicom, [".dcm"]),
    "pads vs dicom size": (_pads_mismatch, ["master_sheet.csv", "image_left_pad", "record 4"]),
    "image without gaze": (_no_gaze, ["eye_gaze.csv"]),
    "NaN coordinates": (_nan_coordinates, ["eye_gaze.csv", "X_ORIGINAL"]),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_fails_cleanly(case: str, release: Path, params: Path, tmp_path: Path) -> None:
    corrupt, expected = BAD_CASES[case]
    corrupt(release)
    out = tmp_path / "out" / "store"
    result = ingest(release, out, params)
    assert result.exit_code == 2, result.output
    message = result.output
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    assert "Traceback" not in message
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()] if out.parent.exists() else []
    assert all(name.startswith("store.validation.") for name in leftovers), leftovers
