"""Versions of the raw data (`data/raw/*`) as git + DVC record them: list, roll back, read one.

A data version is the content hash DVC records for a folder under ``data/raw`` (in a ``.dvc`` file
or as a stage output in ``dvc.lock``) at some git commit. Listing reads only git and the DVC
cache; rolling back restores the tracking files of an older commit, checks the data out (fetching
from the remote when the cache lacks it) and commits the change, so history only grows; reading a
version copies it out through ``DVCFileSystem`` and never touches the workspace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

DATA_ROOT = "data/raw"
LOCK_FILE = "dvc.lock"
# X-ray images: MIMIC-CXR DICOMs or MIMIC-CXR-JPG files (EGD-CXR's PNGs are segmentation masks).
IMAGE_SUFFIXES = (".dcm", ".dicom", ".jpg", ".jpeg")
_COMPLETE = ".complete"


class DataVersionError(ValueError):
    """A revision, path or repository state that a data-version command cannot work with."""


@dataclass(frozen=True)
class TrackedData:
    """One folder under data/raw as recorded by one tracking file at one commit."""

    path: str
    md5: str
    size: int | None
    nfiles: int | None
    source: str


@dataclass(frozen=True)
class DataVersion:
    path: str
    md5: str
    commit: str
    date: str
    subject: str
    tags: tuple[str, ...]
    n_images: int | None
    n_files: int | None
    size: int | None
    current: bool

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class RollbackResult:
    rev: str
    commit: str
    restored: dict[str, tuple[str | None, str]]
    new_commit: str | None

    def describe(self) -> str:
        if self.new_commit is None:
            return f"data already at {self.rev} ({self.commit[:12]}); nothing to do"
        head = f"data rolled back to {self.rev} ({self.commit[:12]})"
        lines = [f"{head}, commit {self.new_commit[:12]}"]
        for path, (old, new) in sorted(self.restored.items()):
            lines.append(f"  {path}: {_short(old)} -> {_short(new)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Materialized:
    path: Path
    commit: str
    md5: str
    reused: bool

    def label(self, rev: str) -> str:
        """The data revision as lineage records it: what the user asked for and what it was."""
        return rev if rev == self.commit else f"{rev}@{self.commit[:12]}"


def repo_root(start: Path | None = None) -> Path:
    """The git work tree holding ``start`` (default: the current folder)."""
    out = _git(Path(start or Path.cwd()), "rev-parse", "--show-toplevel")
    return Path(out.strip())


def resolve(root: Path, rev: str) -> str:
    """Full commit sha of ``rev`` (a sha, tag or branch)."""
    try:
        return _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except DataVersionError:
        raise DataVersionError(f"{rev!r} is not a commit, tag or branch of {root}") from None


def tracked_data(root: Path, rev: str) -> dict[str, TrackedData]:
    """Folders under data/raw recorded at ``rev``, keyed by their repository path."""
    found: dict[str, TrackedData] = {}
    for source in _tracking_files(root, rev):
        text = _git(root, "show", f"{rev}:{source}")
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise DataVersionError(f"{source} at {rev[:12]} is not valid YAML: {err}") from None
        for out in _outs(doc, source):
            path = posixpath.normpath(posixpath.join(posixpath.dirname(source), out["path"]))
            md5 = str(out.get("md5") or "")
            if path.startswith(DATA_ROOT + "/") and md5:
                found[path] = TrackedData(path, md5, out.get("size"), out.get("nfiles"), source)
    return found


def list_versions(root: Path) -> list[DataVersion]:
    """Every distinct content of every data/raw folder in the history, newest first."""
    commits = _history(root)
    head = tracked_data(root, "HEAD") if commits else {}
    first_seen: dict[tuple[str, str], tuple[str, str, str, TrackedData]] = {}
    for commit, date, subject in reversed(commits):  # oldest first: keep where content appeared
        for path, data in tracked_data(root, commit).items():
            first_seen.setdefault((path, data.md5), (commit, date, subject, data))
    tags = _tags_by_version(root)
    cache = _Cache(root)
    versions = []
    for (path, md5), (commit, date, subject, data) in first_seen.items():
        versions.append(
            DataVersion(
                path=path,
                md5=md5.removesuffix(".dir"),
                commit=commit,
                date=date,
                subject=subject,
                tags=tuple(sorted(tags.get((path, md5), ()))),
                n_images=cache.image_count(path, md5),
                n_files=data.nfiles,
                size=data.size,
                current=path in head and head[path].md5 == md5,
            )
        )
    versions.sort(key=lambda v: (v.path, v.date), reverse=True)
    return sorted(versions, key=lambda v: v.path)


def versions_text(versions: list[DataVersion]) -> str:
    if not versions:
        return f"no data under {DATA_ROOT} is tracked by DVC in this repository's history"
    lines: list[str] = []
    for path in sorted({v.path for v in versions}):
        lines.append(path)
        lines.append(f"    {'COMMIT':<12}  {'DATE':<10}  {'MD5':<32}  IMAGES  TAGS / SUBJECT")
        for v in (v for v in versions if v.path == path):
            mark = "*" if v.current else " "
            images = "?" if v.n_images is None else str(v.n_images)
            label = ", ".join(v.tags) or v.subject
            row = f"{v.commit[:12]:<12}  {v.date[:10]:<10}  {v.md5:<32}  {images:>6}"
            lines.append(f"  {mark} {row}  {label}")
    lines.append("* = recorded at HEAD;  ? = not in the local DVC cache (`dvc fetch` to count)")
    return "\n".join(lines)


def rollback(root: Path, rev: str, *, remote: str | None = None) -> RollbackResult:
    """Restore data/raw (and the outputs derived from it in dvc.lock) to ``rev`` and commit.

    Only tracking files change in git (``dvc.lock`` and the ``.dvc`` files of data/raw); code and
    params stay as they are. Refuses to run over uncommitted changes to those files.
    """
    commit = resolve(root, rev)
    target = tracked_data(root, commit)
    if not target:
        raise DataVersionError(f"{rev} ({commit[:12]}) records no data under {DATA_ROOT}")
    dirty = _git(root, "status", "--porcelain", "--", LOCK_FILE, "*.dvc").strip()
    if dirty:
        raise DataVersionError(
            f"uncommitted changes to data tracking files; commit or discard them first:\n{dirty}"
        )
    before = tracked_data(root, "HEAD")
    restore = sorted({d.source for d in target.values()})
    dropped = sorted({d.source for p, d in before.items() if p not in target} - set(restore))
    _git(root, "checkout", commit, "--", *restore)
    for source in dropped:
        if source != LOCK_FILE:
            _git(root, "rm", "-q", "--", source)
    for path in (p for p in before if p not in target):
        shutil.rmtree(root / path, ignore_errors=True)
    _checkout_data(root, remote)

    changed = _git(root, "status", "--porcelain", "--", *restore, *dropped).strip()
    if not changed:
        return RollbackResult(rev, commit, {}, None)
    restored = {p: (before[p].md5 if p in before else None, d.md5) for p, d in target.items()}
    restored.update({p: (before[p].md5, "removed") for p in before if p not in target})
    body = "\n".join(f"{p}: {_short(old)} -> {_short(new)}" for p, (old, new) in restored.items())
    _git(root, "add", "--", *restore)
    _git(root, "commit", "-q", "-m", f"data: roll back {DATA_ROOT} to {rev} ({commit[:12]})",
         "-m", body, "--", *restore, *dropped)  # fmt: skip
    new_commit = _git(root, "rev-parse", "HEAD").strip()
    logger.info("rolled data back to %s (%s) in %s", rev, commit[:12], new_commit[:12])
    return RollbackResult(rev, commit, restored, new_commit)


def materialize(root: Path, path: str | Path, rev: str, cache_dir: Path) -> Materialized:
    """A read-only copy of data folder ``path`` as recorded at ``rev``; the workspace is untouched.

    Copies are kept under ``cache_dir/<md5>/`` and reused; each file's md5 is checked against
    what DVC recorded before the copy is published (renamed into place).
    """
    commit = resolve(root, rev)
    key = _repo_path(root, path)
    recorded = tracked_data(root, commit)
    if key not in recorded:
        known = ", ".join(sorted(recorded)) or "none"
        raise DataVersionError(f"{key} is not tracked at {rev} ({commit[:12]}); tracked: {known}")
    md5 = recorded[key].md5.removesuffix(".dir")
    final = cache_dir / md5
    dest = final / posixpath.basename(key)
    if (final / _COMPLETE).is_file():
        return Materialized(dest, commit, md5, reused=True)

    from dvc.api import DVCFileSystem

    partial = cache_dir / f".{md5}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        fs = DVCFileSystem(str(root), rev=commit)
        expected = {
            name: info["md5"] for name, info in fs.find(key, detail=True).items() if info.get("md5")
        }
        fs.get(key, str(partial / posixpath.basename(key)), recursive=True)
        for name, want in expected.items():
            local = partial / posixpath.relpath(name, posixpath.dirname(key))
            if _md5(local) != want:
                raise DataVersionError(f"{name} at {rev}: md5 mismatch after download")
        (partial / _COMPLETE).write_text(f"{commit}\n")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("materialised %s at %s (%s) into %s", key, rev, commit[:12], dest)
    return Materialized(dest, commit, md5, reused=False)


def _checkout_data(root: Path, remote: str | None) -> None:
    from dvc.exceptions import CheckoutError
    from dvc.repo import Repo

    from pipelines.data_sync import pull

    with Repo(str(root)) as repo:
        try:
            repo.checkout(force=True)
            return
        except CheckoutError:
            pass
    # The cache lacks this version (a fresh clone, or a cleaned cache): fetch it with retries,
    # check every object's md5, then check out.
    logger.info("fetching the missing data from the DVC remote %s", remote or "(default)")
    pull(root, remote)


def _repo_path(root: Path, path: str | Path) -> str:
    path = Path(path)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise DataVersionError(f"{path} is outside the repository {root}") from None
    return posixpath.normpath(path.as_posix())


def _tracking_files(root: Path, rev: str) -> list[str]:
    names = _git(root, "ls-tree", "-r", "--name-only", rev).splitlines()
    return [n for n in names if n == LOCK_FILE or (n.endswith(".dvc") and "/" in n)]


def _outs(doc: dict, source: str) -> list[dict]:
    if source == LOCK_FILE:
        stages = doc.get("stages") or {}
        return [out for stage in stages.values() for out in (stage.get("outs") or [])]
    return list(doc.get("outs") or [])


def _history(root: Path) -> list[tuple[str, str, str]]:
    if not _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip():
        return []
    log = _git(root, "log", "--format=%H%x1f%cI%x1f%s", "--", LOCK_FILE, "*.dvc")
    return [tuple(line.split("\x1f", 2)) for line in log.splitlines() if line]  # type: ignore[misc]


def _tags_by_version(root: Path) -> dict[tuple[str, str], list[str]]:
    tags: dict[tuple[str, str], list[str]] = {}
    for tag in _git(root, "tag", "--list").split():
        commit = resolve(root, tag)
        for path, data in tracked_data(root, commit).items():
            tags.setdefault((path, data.md5), []).append(tag)
    return tags


class _Cache:
    """Counts images in a DVC directory version from its manifest in the local cache."""

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            self._repo_cache = repo.cache.local

    def image_count(self, path: str, md5: str) -> int | None:
        if not md5.endswith(".dir"):  # a single tracked file
            return int(path.lower().endswith(IMAGE_SUFFIXES))
        manifest = Path(self._repo_cache.oid_to_path(md5))
        if not manifest.is_file():
            return None
        entries = json.loads(manifest.read_text())
        return sum(1 for e in entries if e["relpath"].lower().endswith(IMAGE_SUFFIXES))


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _short(md5: str | None) -> str:
    return "none" if md5 is None else md5.removesuffix(".dir")[:12]


def _git(root: Path, *args: str, check: bool = True) -> str:
    proc = subprocess.run(  # nosec B603  # fixed git arguments, no shell
        ["git", *args], cwd=root, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise DataVersionError(f"git {' '.join(args)} in {root}: {proc.stderr.strip()}")
    return proc.stdout
