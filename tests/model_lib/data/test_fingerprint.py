"""Folder fingerprints: content and names count, location does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from model_lib.data.fingerprint import tree_digest


def make_tree(root: Path) -> Path:
    (root / "egd-cxr").mkdir(parents=True)
    (root / "egd-cxr" / "master_sheet.csv").write_text("dicom_id,label\na,0\n")
    (root / "images").mkdir()
    (root / "images" / "a.dcm").write_bytes(bytes(range(256)) * 10)
    return root


def test_a_copy_elsewhere_has_the_same_digest(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "one")
    shutil.copytree(tree, tmp_path / "two")
    assert tree_digest(tree) == tree_digest(tmp_path / "two")
    assert len(tree_digest(tree)) == 32
    assert len(tree_digest(tree, "sha256")) == 64


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "images" / "a.dcm").write_bytes(bytes(range(256)) * 9 + b"\x01" * 256),
        lambda root: (root / "images" / "a.dcm").rename(root / "images" / "b.dcm"),
        lambda root: (root / "images" / "extra.dcm").write_bytes(b""),
        lambda root: (root / "egd-cxr" / "master_sheet.csv").unlink(),
        # One changed byte in a small file.
        lambda root: (root / "egd-cxr" / "master_sheet.csv").write_text("dicom_id,label\na,1\n"),
    ],
    ids=["edit", "rename", "add-empty", "remove", "one-byte"],
)
def test_any_change_changes_the_digest(tmp_path: Path, change) -> None:
    tree = make_tree(tmp_path / "t")
    before = tree_digest(tree)
    change(tree)
    assert tree_digest(tree) != before


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        tree_digest(tmp_path / "absent")
