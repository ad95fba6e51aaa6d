"""Helpers for tests that drive real git + DVC in a throwaway repository."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """The test's environment with the venv's tools first on PATH and a git identity."""
    out = dict(os.environ)
    out["PATH"] = f"{BIN}{os.pathsep}{out['PATH']}"
    out.update(
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
        GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org",
    )  # fmt: skip
    return out


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600, check=False
    )
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def git(repo: Path, *args: str) -> str:
    return run(["git", *args], repo).stdout


def dvc(repo: Path, *args: str) -> str:
    return run([str(BIN / "dvc"), *args], repo).stdout


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def init_repo(repo: Path, remote: Path) -> None:
    """A fresh git + DVC repository with a local-folder DVC remote as default."""
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "local", str(remote))
