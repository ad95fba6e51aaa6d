"""Data versions on a throwaway git + DVC repository: list, roll back, read without checkout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from model_lib.data.synth import generate_dataset
from pipelines.data_versions import (
    DataVersionError,
    list_versions,
    materialize,
    rollback,
    tracked_data,
    versions_text,
)
from tests.pipelines.gitdvc import BIN, dvc, git, init_repo, run, tree_hashes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELEASE = "data/raw/release"
POLICY = Path(__file__).resolve().parents[2] / "mlflow" / "promotion.yaml"
N_V1, N_V2 = 6, 8


def add_version(repo: Path, n_images: int, seed: int, tag: str) -> dict[str, str]:
    """Write a release, track it with DVC, commit and tag it; its file hashes."""
    generate_dataset(repo / RELEASE, n_images=n_images, seed=seed, scale=0.05, overwrite=True)
    dvc(repo, "add", "-q", RELEASE)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", f"data {tag}")
    git(repo, "tag", tag)
    dvc(repo, "push", "-q")
    return tree_hashes(repo / RELEASE)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str], dict[str, str]]:
    """A repo with two tagged data versions (v1: 6 images, v2: 8), v2 checked out."""
    repo = tmp_path / "repo"
    init_repo(repo, tmp_path / "remote")
    (repo / "README").write_text("code\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    v1 = add_version(repo, N_V1, seed=0, tag="data-v1")
    (repo / "README").write_text("code change, no data change\n")
    git(repo, "commit", "-qam", "code only")
    v2 = add_version(repo, N_V2, seed=1, tag="data-v2")
    assert v1 != v2
    return repo, v1, v2


def test_versions_lists_each_content_once_with_tags_md5_and_images(repo) -> None:
    repo, _, _ = repo
    versions = list_versions(repo)
    assert [(v.tags, v.n_images, v.current) for v in versions] == [
        (("data-v2",), N_V2, True),
        (("data-v1",), N_V1, False),
    ]
    recorded = tracked_data(repo, "data-v1")[RELEASE].md5
    assert versions[1].md5 == recorded.removesuffix(".dir")
    assert versions[1].commit == git(repo, "rev-parse", "data-v1").strip()
    assert versions[0].n_files == len(tree_hashes(repo / RELEASE))
    text = versions_text(versions)
    assert RELEASE in text and "data-v1" in text and "* " in text

    # Counting images reads the cache; without it the count is unknown, not wrong.
    shutil.rmtree(repo / ".dvc" / "cache")
    assert {v.n_images for v in list_versions(repo)} == {None}


def test_rollback_is_byte_identical_committed_and_idempotent(repo) -> None:
    repo, v1, v2 = repo
    head = git(repo, "rev-parse", "HEAD").strip()
    result = rollback(repo, "data-v1")
    assert tree_hashes(repo / RELEASE) == v1
    assert result.new_commit == git(repo, "rev-parse", "HEAD").strip() != head
    assert git(repo, "status", "--porcelain").strip() == ""
    assert (repo / "README").read_text().startswith("code change")  # code stays
    assert "data-v1" in git(repo, "log", "-1", "--format=%s")
    assert [v.tags for v in list_versions(repo) if v.current] == [("data-v1",)]

    again = rollback(repo, "data-v1")
    assert again.new_commit is None and "nothing to do" in again.describe()
    assert git(repo, "rev-parse", "HEAD").strip() == result.new_commit

    rollback(repo, "data-v2")
    assert tree_hashes(repo / RELEASE) == v2


def test_rollback_fetches_from_the_remote_when_the_cache_lacks_the_version(repo) -> None:
    repo, v1, _ = repo
    shutil.rmtree(repo / ".dvc" / "cache")
    rollback(repo, "data-v1")
    assert tree_hashes(repo / RELEASE) == v1


def test_rollback_refuses_bad_revisions_and_uncommitted_tracking_files(repo) -> None:
    repo, _, v2 = repo
    with pytest.raises(DataVersionError, match="'no-such-tag' is not a commit"):
        rollback(repo, "no-such-tag")
    first = git(repo, "rev-list", "--max-parents=0", "HEAD").strip()
    with pytest.raises(DataVersionError, match="records no data under data/raw"):
        rollback(repo, first)
    dvc_file = repo / f"{RELEASE}.dvc"
    dvc_file.write_text(dvc_file.read_text() + "# local edit\n")
    with pytest.raises(DataVersionError, match="uncommitted changes"):
        rollback(repo, "data-v1")
    assert tree_hashes(repo / RELEASE) == v2  # nothing was touched


def test_materialize_reads_a_version_without_touching_the_workspace(repo, tmp_path) -> None:
    repo, v1, v2 = repo
    shutil.rmtree(repo / ".dvc" / "cache")  # the copy comes from the remote
    status = git(repo, "status", "--porcelain")
    copy = materialize(repo, RELEASE, "data-v1", tmp_path / "revs")
    assert tree_hashes(copy.path) == v1 and not copy.reused
    assert copy.label("data-v1") == f"data-v1@{copy.commit[:12]}"
    assert tree_hashes(repo / RELEASE) == v2
    assert git(repo, "status", "--porcelain") == status
    assert materialize(repo, repo / RELEASE, "data-v1", tmp_path / "revs").reused
    with pytest.raises(DataVersionError, match="data/raw/other is not tracked at data-v1"):
        materialize(repo, "data/raw/other", "data-v1", tmp_path / "revs")


def test_cli_versions_and_rollback(repo) -> None:
    repo, v1, _ = repo
    cli = str(BIN / "cxrgaze")
    listed = json.loads(run([cli, "data", "versions", "--json"], repo).stdout)
    assert [v["tags"] for v in listed] == [["data-v2"], ["data-v1"]]
    out = run([cli, "data", "rollback", "data-v1"], repo).stdout
    assert "rolled back to data-v1" in out and RELEASE in out
    assert tree_hashes(repo / RELEASE) == v1
    bad = run([cli, "data", "rollback", "nope"], repo, check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("error: 'nope' is not a commit")
    assert "Traceback" not in bad.stderr


def test_cli_run_on_a_data_revision_reads_that_version(repo) -> None:
    """`run --data-rev` hands the pipeline the version's copy (the pipeline itself is covered by
    test_local_pipeline); an unreachable tracking server stops it right after the copy."""
    repo, v1, v2 = repo
    cli = str(BIN / "cxrgaze")
    args = [cli, "run", "--raw-dir", RELEASE, "--data-rev", "data-v1", "--preset", "ci",
            "--tracking-uri", "http://127.0.0.1:9", "--policy", str(POLICY)]  # fmt: skip
    proc = run(args, repo, check=False)
    assert proc.returncode == 2 and "127.0.0.1:9" in proc.stderr, proc.stderr
    commit = git(repo, "rev-parse", "data-v1").strip()
    assert f"{RELEASE} at data-v1 ({commit[:12]}" in proc.stdout
    copies = list((repo / "runs" / "data-revs").glob("*/release"))
    assert len(copies) == 1 and tree_hashes(copies[0]) == v1
    assert tree_hashes(repo / RELEASE) == v2


def test_cli_push_and_pull(repo) -> None:
    repo, _, v2 = repo
    cli = str(BIN / "cxrgaze")
    pushed = run([cli, "data", "push"], repo).stdout
    assert "remote local" in pushed and "0 objects transferred" in pushed
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / RELEASE)
    run([cli, "data", "pull"], repo)
    assert tree_hashes(repo / RELEASE) == v2
