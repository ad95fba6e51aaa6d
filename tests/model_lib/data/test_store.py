from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from model_lib.config import GeometryConfig
from model_lib.data.errors import DataError
from model_lib.data.geometry import CanvasTransform
from model_lib.data.store import (
    FORMAT_VERSION,
    MANIFEST_COLUMNS,
    POINT_COLUMNS,
    PackedStore,
    StoreWriter,
    file_sha256,
)

GEOMETRY = GeometryConfig(target_hw=(8, 6), pad_to=(80, 60))
SPLITS = {"train": 3, "val": 0, "test": 2}


def record(i: int, label: int = 0, **extra: Any) -> dict[str, Any]:
    transform = CanvasTransform.build((61 + i, 50), GEOMETRY.target_hw, GEOMETRY.pad_to)
    return {
        "dicom_id": f"img-{i}",
        "patient_id": 10_000_000 + i // 2,
        "study_id": 50_000_000 + i,
        "label": label,
        "source_sha256": f"{i:064x}",
        **transform.to_dict(),
        **extra,
    }


def points(n_gaze: int, n_fix: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_gaze + n_fix
    return pd.DataFrame(
        {
            "source": ["gaze"] * n_gaze + ["fixation"] * n_fix,
            "x": rng.uniform(-5, 50, n).astype(np.float32),
            "y": rng.uniform(0, 61, n).astype(np.float32),
            "duration": np.r_[np.full(n_gaze, np.nan), rng.uniform(0.1, 1, n_fix)],
            "time": np.sort(rng.uniform(0, 30, n)),
        }
    )


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(GEOMETRY.target_hw, dtype=np.float32)


def write_store(out: Path, seed: int = 0, params: dict[str, Any] | None = None) -> dict:
    """A 3 + 0 + 2 image store; returns what went in, by dicom_id."""
    added = {}
    with StoreWriter(out, GEOMETRY, SPLITS, params=params) as writer:
        for i, split in enumerate(["train", "test", "train", "train", "test"]):
            img, pts = image(seed + i), points(4 * i, i, seed=seed + i)
            writer.add(split, img, record(i, label=i % 3, site=f"s{i}"), pts)
            added[f"img-{i}"] = (split, img, pts)
    return added


def test_round_trip(tmp_path: Path) -> None:
    added = write_store(tmp_path / "store", params={"data_rev": "abc"})
    store = PackedStore.open(tmp_path / "store")
    assert store.split_names == ("train", "val", "test")
    assert GeometryConfig(**store.geometry) == GEOMETRY
    meta = json.loads((tmp_path / "store" / "store.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION and meta["splits"] == SPLITS
    assert meta["params"] == {"data_rev": "abc"}

    manifest = pd.read_parquet(tmp_path / "store" / "manifest.parquet")
    assert list(manifest.columns) == [*MANIFEST_COLUMNS, "site"]
    assert len(manifest) == 5 and manifest["dicom_id"].is_unique

    for name, count in SPLITS.items():
        split = store.split(name)
        assert len(split) == count and split.images.shape == (count, 8, 6)
        assert list(split.manifest["index_in_split"]) == list(range(count))
        for i, row in split.manifest.iterrows():
            where, img, pts = added[row["dicom_id"]]
            assert where == name == row["split"]
            assert row["class_name"] == ("Normal", "CHF", "Pneumonia")[row["label"]]
            assert row["native_h"] == 61 + int(row["dicom_id"][4:])
            restored = split.image(int(i))
            assert restored.dtype == np.float32
            np.testing.assert_allclose(restored, img, atol=0.5 / 65535 + 1e-7)
            got = split.points_for(int(i))
            assert list(got.columns) == list(POINT_COLUMNS)
            assert (got["index_in_split"] == i).all() and (got["dicom_id"] == row["dicom_id"]).all()
            pd.testing.assert_frame_equal(
                got[list(POINT_COLUMNS[2:])],
                pts.astype({"x": np.float32, "y": np.float32, "duration": np.float32}),
                check_dtype=False,
            )
            assert got["x"].dtype == np.float32 and got["duration"].dtype == np.float32


def test_images_are_memory_mapped(tmp_path: Path) -> None:
    write_store(tmp_path / "store")
    assert isinstance(PackedStore.open(tmp_path / "store").split("train").images, np.memmap)
    raw = np.load(tmp_path / "store" / "train" / "images.npy", mmap_mode="r")
    assert raw.dtype == np.uint16 and raw.shape == (3, 8, 6)
    assert raw.max() <= 65535 and raw.max() > 60000


def test_failure_inside_the_block_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out" / "store"
    with pytest.raises(RuntimeError, match="boom"), StoreWriter(out, GEOMETRY, SPLITS) as writer:
        writer.add("train", image(0), record(0), points(3, 1))
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_failed_write_keeps_the_existing_store(tmp_path: Path) -> None:
    out = tmp_path / "store"
    write_store(out, seed=0)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with (
        pytest.raises(ValueError, match="img-0: added twice"),
        StoreWriter(out, GEOMETRY, SPLITS) as writer,
    ):
        writer.add("train", image(9), record(0), points(1, 1))
        writer.add("test", image(9), record(0), points(1, 1))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_successful_write_replaces_the_store(tmp_path: Path) -> None:
    out = tmp_path / "store"
    write_store(out, seed=0)
    added = write_store(out, seed=100)
    split = PackedStore.open(out).split("train")
    np.testing.assert_allclose(split.image(0), added["img-0"][1], atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_unfilled_split_fails_at_exit(tmp_path: Path) -> None:
    out = tmp_path / "store"
    with pytest.raises(ValueError, match="not filled"), StoreWriter(out, GEOMETRY, SPLITS) as w:
        w.add("train", image(0), record(0), points(1, 0))
    assert list(tmp_path.iterdir()) == []


def _bad(img: np.ndarray | None = None, **changes: Any) -> tuple[np.ndarray, dict]:
    rec = record(7)
    for key, value in changes.items():
        if value is None:
            del rec[key]
        else:
            rec[key] = value
    return (image(7) if img is None else img), rec


NAN_IMAGE = image(7)
NAN_IMAGE[2, 3] = np.nan
BAD_ADDS = {
    "wrong shape": (_bad(np.zeros((6, 8), np.float32)), "shape"),
    "NaN": (_bad(NAN_IMAGE), "NaN"),
    "above one": (_bad(image(7) + 0.5), r"not \[0, 1\]"),
    "negative": (_bad(image(7) - 0.5), r"not \[0, 1\]"),
    "missing field": (_bad(source_sha256=None), "lacks"),
    "label out of range": (_bad(label=3), "label"),
    "class name contradicts label": (_bad(class_name="CHF"), "class_name"),
    "reserved column": (_bad(split="val"), "reserved"),
    "other target size": (_bad(out_h=16), "target_hw"),
}


@pytest.mark.parametrize("case", list(BAD_ADDS))
def test_bad_add_names_the_image_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    (img, rec), pattern = BAD_ADDS[case]
    with (
        pytest.raises(ValueError, match=pattern) as info,
        StoreWriter(tmp_path / "store", GEOMETRY, SPLITS) as writer,
    ):
        writer.add("train", img, rec, points(2, 1))
    assert "img-7" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("split", "pts", "pattern"),
    [
        ("holdout", points(1, 1), "unknown split"),
        ("train", points(2, 1).drop(columns="time"), "lack columns"),
        ("train", points(2, 1).assign(source="saccade"), "saccade"),
    ],
)
def test_bad_split_or_points(split: str, pts: pd.DataFrame, pattern: str, tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=pattern),
        StoreWriter(tmp_path / "store", GEOMETRY, SPLITS) as writer,
    ):
        writer.add(split, image(0), record(0), pts)
    assert list(tmp_path.iterdir()) == []


def test_split_overflow(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="already holds"),
        StoreWriter(tmp_path / "store", GEOMETRY, {"train": 1}) as writer,
    ):
        writer.add("train", image(0), record(0), points(1, 1))
        writer.add("train", image(1), record(1), points(1, 1))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


CORRUPTIONS = {
    "no store": (lambda s: None, "store.json", "nowhere"),
    "store.json garbage": (lambda s: (s / "store.json").write_text("{oops"), "store.json", None),
    "store.json version": (
        lambda s: (s / "store.json").write_text(
            json.dumps({**json.loads((s / "store.json").read_text()), "format_version": 99})
        ),
        "store.json",
        None,
    ),
    "manifest garbage": (
        lambda s: (s / "manifest.parquet").write_bytes(b"x" * 64),
        "manifest",
        None,
    ),
    "manifest missing": (lambda s: (s / "manifest.parquet").unlink(), "manifest", None),
    "images missing": (lambda s: (s / "train" / "images.npy").unlink(), "images.npy", None),
    "images truncated": (lambda s: _truncate(s / "train" / "images.npy"), "images.npy", None),
    "points missing": (lambda s: (s / "train" / "points.parquet").unlink(), "points", None),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_store_names_the_file(case: str, tmp_path: Path) -> None:
    corrupt, fragment, location = CORRUPTIONS[case]
    store_dir = tmp_path / (location or "store")
    if location is None:
        write_store(store_dir)
    corrupt(store_dir)
    with pytest.raises(DataError) as info:
        PackedStore.open(store_dir).split("train")
    assert fragment in info.value.file and str(store_dir) in info.value.file


def test_file_sha256_streams_large_files(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()
