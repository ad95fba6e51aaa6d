"""DVC end to end on a throwaway git+DVC copy of the project: repro, S3 push/pull, rollback."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest
import yaml

from tests.pipelines.gitdvc import dvc, git, init_repo, tree_hashes

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore")
PROJECT_DIRS = ("model_lib", "components", "pipelines")
OUTS = ("data/raw/synthetic", "data/processed/store", "data/processed/heatmaps")


def data_hashes(repo: Path) -> dict[str, str]:
    hashes = {}
    for out in OUTS:
        hashes.update({f"{out}/{k}": v for k, v in tree_hashes(repo / out).items()})
    return hashes


def set_params(repo: Path, **synth: object) -> None:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["synth"].update(synth)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """The project's DVC stages and code in a fresh git repo, with tiny parameters."""
    repo = tmp_path / "repo"
    init_repo(repo, tmp_path / "remote")
    for name in PROJECT_FILES:
        shutil.copy2(ROOT / name, repo / name)
    for name in PROJECT_DIRS:
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synth"] = {"n_images": 9, "seed": 0, "scale": 0.1}
    params["data"]["native_scale"] = 0.1
    params["data"]["geometry"]["target_hw"] = [80, 64]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "project")
    return repo


def test_repro_push_pull_and_rollback(dvc_repo: Path, s3_endpoint: str) -> None:
    repo = dvc_repo
    dvc(repo, "repro")
    assert (repo / "dvc.lock").is_file()
    assert "up to date" in dvc(repo, "status").lower()
    assert (repo / "data/processed/store/manifest.parquet").is_file()
    assert (repo / "data/processed/store/validation.html").is_file()
    assert (repo / "data/processed/heatmaps/train/maps.npy").is_file()
    v1 = data_hashes(repo)
    # The S3 remote is part of the project config; its endpoint stays in config.local.
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="cxr-gaze-test")
    dvc(repo, "remote", "add", "s3", "s3://cxr-gaze-test/dvc")
    dvc(repo, "remote", "modify", "--local", "s3", "endpointurl", s3_endpoint)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data v1")
    git(repo, "tag", "data-v1")

    # Push to S3 (moto), wipe the cache and the workspace data, pull back: byte-identical.
    dvc(repo, "push", "-r", "s3")
    shutil.rmtree(repo / ".dvc" / "cache")
    for out in OUTS:
        shutil.rmtree(repo / out)
    dvc(repo, "pull", "-r", "s3")
    assert data_hashes(repo) == v1

    # A second data version, then the first one restored with git + dvc checkout.
    set_params(repo, seed=1)
    dvc(repo, "repro")
    v2 = data_hashes(repo)
    assert v2 != v1
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "data v2")
    git(repo, "tag", "data-v2")
    git(repo, "checkout", "-q", "data-v1")
    dvc(repo, "checkout", "--force")
    assert data_hashes(repo) == v1
    git(repo, "checkout", "-q", "data-v2")
    dvc(repo, "checkout", "--force")
    assert data_hashes(repo) == v2
