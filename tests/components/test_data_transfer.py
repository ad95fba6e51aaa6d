"""Folders between steps by URI, against a real S3 protocol server (moto): content-addressed
upload, verified download, clear errors, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from components.data_transfer import POINTER_FILE, TransferError, materialize, publish
from model_lib.data.fingerprint import tree_digest

BUCKET = "cxr-gaze-transfer"


@pytest.fixture
def remote(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("CXRGAZE_DATA_CACHE", str(tmp_path / "cache"))
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/stores"


def make_folder(root: Path, payload: bytes = b"\x00\x01" * 5000) -> Path:
    (root / "train").mkdir(parents=True)
    (root / "train" / "images.npy").write_bytes(payload)
    (root / "manifest.parquet").write_bytes(b"PAR1 manifest")
    return root


def objects(s3_endpoint: str, prefix: str) -> dict[str, str]:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in listed}


def test_round_trip_is_byte_identical_and_content_addressed(
    remote: str, s3_endpoint: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "store")
    pointer = publish(folder, remote, tmp_path / "artifact")
    digest = tree_digest(folder)
    assert pointer["uri"] == f"{remote}/{digest}" and pointer["md5"] == digest
    # The artifact holds only the pointer.
    assert [p.name for p in (tmp_path / "artifact").iterdir()] == [POINTER_FILE]
    keys = objects(s3_endpoint, f"stores/{digest}/")
    assert set(keys) == {f"stores/{digest}/train/images.npy", f"stores/{digest}/manifest.parquet"}

    local = materialize(tmp_path / "artifact")
    assert local.is_relative_to(tmp_path / "cache")
    assert tree_digest(local) == digest
    assert (local / "train" / "images.npy").read_bytes() == b"\x00\x01" * 5000
    assert materialize(tmp_path / "artifact") == local  # cached

    # The same content again: same address, nothing uploaded twice.
    publish(make_folder(tmp_path / "again"), remote, tmp_path / "artifact2")
    assert objects(s3_endpoint, f"stores/{digest}/") == keys


def test_a_plain_folder_is_its_own_data(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "store")
    assert materialize(folder) == folder


def test_a_corrupt_object_is_named_and_nothing_is_kept(
    remote: str, s3_endpoint: str, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "store", payload=b"corrupt me" * 100)
    pointer = publish(folder, remote, tmp_path / "artifact")
    key = f"{pointer['uri'].removeprefix(f's3://{BUCKET}/')}/train/images.npy"
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket=BUCKET, Key=key, Body=b"tampered!!" * 100
    )
    with pytest.raises(TransferError, match=r"train/images.npy: md5 .* says"):
        materialize(tmp_path / "artifact")
    assert not any((tmp_path / "cache").iterdir())  # no partial copy left behind


def test_a_missing_object_is_named(remote: str, tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "store", payload=b"soon gone")
    publish(folder, remote, tmp_path / "artifact")
    pointer_path = tmp_path / "artifact" / POINTER_FILE
    pointer = json.loads(pointer_path.read_text())
    pointer["files"]["extra.npy"] = "0" * 32
    pointer["md5"] = "f" * 32
    pointer_path.write_text(json.dumps(pointer))
    with pytest.raises(TransferError, match=r"extra\.npy: missing from the object store"):
        materialize(tmp_path / "artifact")


def test_a_remote_must_be_a_uri(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a URI"):
        publish(make_folder(tmp_path / "store"), "bucket/prefix", tmp_path / "artifact")
