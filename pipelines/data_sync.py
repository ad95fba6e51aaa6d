"""Push and pull the DVC-tracked data so that an object store going away for a while costs a
delay, not a failed run or a corrupt remote.

Two layers of retries, because they cover different failures:

- each S3 request retries in botocore's ``standard`` mode (:func:`components.data_transfer.
  s3_retries`; aiobotocore, which s3fs and DVC's S3 remote use, reads ``AWS_RETRY_MODE`` and
  ``AWS_MAX_ATTEMPTS`` like boto3 does): a restart of a few seconds goes unnoticed;
- the whole ``dvc push`` / ``dvc fetch`` is tried again with exponential backoff when files
  still failed. That is safe: DVC skips objects the remote (or the cache) already holds, so a
  later attempt moves only what is missing.

S3 stores each object whole or not at all, but "whole" is whatever bytes arrived, so after a
push every object the workspace references is checked against its content address (DVC 3 keys
an object ``files/md5/<2 hex>/<30 hex>``, a directory's manifest with ``.dir``): by the ETag
the store reports (the md5 of a single-part upload's bytes) and, where the ETag is not a plain
md5 or disagrees, by downloading and hashing the object. A pull fetches into the cache, hashes
the cache's copies, and only then checks the workspace out. Either check raises
:class:`DataSyncError` naming the remote (or the cache) and the objects.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from components.data_transfer import DEFAULT_S3_ATTEMPTS, retry_call, s3_retries

logger = logging.getLogger(__name__)

VerifyMode = Literal["etag", "content"]
T = TypeVar("T")
_CHUNK = 1 << 20
_SHOWN = 5
"""Bad objects named in an error message; the count says how many more there are."""


class DataSyncError(RuntimeError):
    """A push or pull that failed for good, or objects that do not hold what their keys say."""


@dataclass(frozen=True)
class SyncResult:
    """What a push or pull did: the remote (name and URL), the objects the last attempt moved
    (earlier attempts' objects are skipped as present), the attempts it took, and how many
    objects were checked against their md5."""

    remote: str
    url: str
    transferred: int
    attempts: int
    verified: int

    def describe(self) -> str:
        tries = "" if self.attempts == 1 else f" (after {self.attempts} attempts)"
        return (
            f"remote {self.remote} ({self.url}): {self.transferred} objects transferred{tries}, "
            f"{self.verified} checked against their md5"
        )


def _retryable() -> tuple[type[BaseException], ...]:
    """Errors another attempt can cure: files that failed to transfer, an unreachable store."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import HTTPClientError
    from dvc.exceptions import FileTransferError

    return (FileTransferError, BotoConnectionError, HTTPClientError, OSError)


def _resolve_remote(repo: Any, remote: str | None) -> tuple[str, str]:
    """(name, url) of ``remote`` or of the default remote."""
    remotes = repo.config.get("remote", {})
    name = remote or repo.config.get("core", {}).get("remote")
    if not name:
        raise DataSyncError(
            f"{repo.root_dir}: no remote given and no default remote in .dvc/config "
            "(`dvc remote add -d <name> <url>`)"
        )
    if name not in remotes:
        raise DataSyncError(
            f"{repo.root_dir}: no DVC remote {name!r}; remotes are {sorted(remotes)}"
        )
    return name, str(remotes[name].get("url", ""))


def _fresh_s3_clients() -> None:
    """Forget cached s3fs instances, so the next one builds its client under the retry
    settings now in force and with no connection left over from before an outage."""
    try:
        from s3fs import S3FileSystem
    except ImportError:  # no S3 support installed: nothing cached either
        return
    S3FileSystem.clear_instance_cache()


def _expected_oids(repo: Any, targets: Sequence[str] | None, remote: str | None = None) -> set[str]:
    """Hashes of every object the workspace (or ``targets``) references, directory manifests
    and their entries included (the manifests are read from the local cache)."""
    used = repo.used_objs(targets=list(targets) if targets else None, remote=remote)
    return {hash_info.value for objects in used.values() for hash_info in objects}


def _md5_of(open_file: Callable[[], Any]) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open_file() as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bad_objects(
    fs: Any, paths: dict[str, str], mode: VerifyMode, listing: dict[str, dict]
) -> tuple[list[str], dict[str, str]]:
    """The ``paths`` (object path -> md5 its key says) missing from ``listing``, and those whose
    bytes hash to something else (path -> their md5)."""
    missing, wrong = [], {}
    for path, want in sorted(paths.items()):
        info = listing.get(path)
        if info is None:
            missing.append(path)
            continue
        etag = str(info.get("ETag") or "").strip('"')
        if mode == "etag" and etag == want:
            continue
        # No usable ETag (a multipart upload's, a local folder) or a disagreeing one: the bytes.
        if (got := _md5_of(lambda p=path: fs.open(p, "rb"))) != want:
            wrong[path] = got
    return missing, wrong


def _raise_if_bad(
    where: str, total: int, missing: list[str], wrong: dict[str, str], note: str = ""
) -> None:
    problems = [f"missing: {p}" for p in missing]
    problems += [f"content differs from its key: {p} (md5 {got})" for p, got in wrong.items()]
    if problems:
        more = len(problems) - _SHOWN
        raise DataSyncError(
            f"{where}: {len(problems)} of {total} objects are bad: "
            + "; ".join(problems[:_SHOWN])
            + (f"; and {more} more" if more > 0 else "")
            + note
        )


def verify_remote(
    repo_root: Path,
    remote: str | None = None,
    *,
    targets: Sequence[str] | None = None,
    mode: VerifyMode = "etag",
) -> int:
    """Check that the remote holds every object the workspace (or ``targets``) references, each
    with the md5 its key says; returns how many were checked.

    ``mode="etag"`` trusts an ETag that equals the key (S3 computes it from the bytes it stored)
    and downloads only objects without one; ``"content"`` downloads and hashes every object.

    Raises:
        DataSyncError: an object is missing or differs from its key (names the remote and the
            objects), or there is no such remote.
    """
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        name, url = _resolve_remote(repo, remote)
        oids = _expected_oids(repo, targets, name)
        odb = repo.cloud.get_remote_odb(name)
        paths = {odb.oid_to_path(oid): oid.removesuffix(".dir") for oid in oids}
        listing = _listing(odb) if paths else {}
        missing, wrong = _bad_objects(odb.fs, paths, mode, listing)
    _raise_if_bad(f"remote {name} ({url})", len(paths), missing, wrong)
    return len(paths)


def _listing(odb: Any) -> dict[str, dict]:
    """Every object under an object database's root, with what the store says about it: for
    S3 one paginated listing that carries each object's ETag, elsewhere the paths alone."""
    if odb.fs.protocol == "s3":
        return odb.fs.fs.find(odb.path, detail=True)  # s3fs underneath DVC's wrapper
    return {path: {} for path in odb.fs.find(odb.path)}


def verify_cache(repo_root: Path, *, targets: Sequence[str] | None = None) -> int:
    """Hash every local cache object the workspace (or ``targets``) references; returns how
    many were checked. A bad copy is deleted (the cache is content-addressed: the next fetch
    brings the object again).

    Raises:
        DataSyncError: an object is missing from the cache or differs from its key.
    """
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        oids = _expected_oids(repo, targets)
        odb = repo.cache.local
        paths = {odb.oid_to_path(oid): oid.removesuffix(".dir") for oid in oids}
        listing = {p: {} for p in paths if Path(p).is_file()}
        missing, wrong = _bad_objects(odb.fs, paths, "content", listing)
        for path in wrong:
            Path(path).unlink(missing_ok=True)
    note = "; the bad copies were deleted from the cache" if wrong else ""
    _raise_if_bad(f"DVC cache {odb.path}", len(paths), missing, wrong, note)
    return len(paths)


@dataclass(frozen=True)
class _Retries:
    attempts: int
    first_delay: float
    max_delay: float
    s3_attempts: int
    sleep: Callable[[float], None]

    def run(self, what: str, action: Callable[[], T]) -> tuple[T, int]:
        """``action()`` under the S3 retry settings, the whole of it retried as configured:
        (its result, attempts used). Raises DataSyncError once the attempts are spent."""
        tries = 0

        def once() -> T:
            nonlocal tries
            tries += 1
            _fresh_s3_clients()
            return action()

        start = time.monotonic()
        try:
            with s3_retries(self.s3_attempts):
                result = retry_call(
                    once, what=what, attempts=self.attempts, first_delay=self.first_delay,
                    max_delay=self.max_delay, retry_on=_retryable(), sleep=self.sleep,
                )  # fmt: skip
        except _retryable() as err:
            raise DataSyncError(
                f"{what} failed after {tries} attempts over {time.monotonic() - start:.0f} s: "
                f"{type(err).__name__}: {err}"
            ) from err
        return result, tries


def _remote_of(repo_root: Path, remote: str | None) -> tuple[str, str]:
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return _resolve_remote(repo, remote)


def _dvc(op: Literal["push", "fetch"], repo_root: Path, **kwargs: Any) -> int:
    """One ``dvc push`` or ``dvc fetch``; the number of objects it moved."""
    from dvc.repo import Repo

    with Repo(str(repo_root)) as repo:
        return int(getattr(repo, op)(**kwargs))


def push(
    repo_root: Path,
    remote: str | None = None,
    *,
    attempts: int = 5,
    first_delay: float = 2.0,
    max_delay: float = 60.0,
    jobs: int | None = None,
    targets: Sequence[str] | None = None,
    verify: VerifyMode = "etag",
    s3_attempts: int = DEFAULT_S3_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """``dvc push`` to ``remote`` (default: the repository's default remote), then
    :func:`verify_remote`.

    Args:
        repo_root: the DVC repository (its root folder).
        attempts: whole pushes tried before giving up; waits between them start at
            ``first_delay`` seconds and double up to ``max_delay``.
        jobs: parallel transfers (DVC's default when None).
        targets: tracked paths to push (everything the workspace references when None).
        verify: how the objects are checked afterwards (see :func:`verify_remote`).
        s3_attempts: tries per S3 request (botocore ``standard`` mode); an
            ``AWS_MAX_ATTEMPTS`` already in the environment wins.

    Raises:
        DataSyncError: no such remote; files still failing after ``attempts`` pushes (names
            the remote and its URL); an object on the remote that differs from its key.
    """
    name, url = _remote_of(repo_root, remote)
    retries = _Retries(attempts, first_delay, max_delay, s3_attempts, sleep)
    where = f"remote {name} ({url})"
    moved, tries = retries.run(
        f"dvc push with {where}",
        lambda: _dvc("push", repo_root, targets=targets, remote=name, jobs=jobs),
    )
    logger.info("dvc push with %s: %d objects in %d attempts", where, moved, tries)
    checked, _ = retries.run(
        f"checking the objects on {where}",
        lambda: verify_remote(repo_root, name, targets=targets, mode=verify),
    )
    return SyncResult(remote=name, url=url, transferred=moved, attempts=tries, verified=checked)


def pull(
    repo_root: Path,
    remote: str | None = None,
    *,
    attempts: int = 5,
    first_delay: float = 2.0,
    max_delay: float = 60.0,
    jobs: int | None = None,
    targets: Sequence[str] | None = None,
    s3_attempts: int = DEFAULT_S3_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> SyncResult:
    """``dvc pull`` in three steps: fetch into the cache from ``remote`` with retries as
    :func:`push` has, :func:`verify_cache`, then check the workspace out (overwriting local
    changes to tracked data), so that no object that fails its md5 reaches the workspace.

    Raises:
        DataSyncError: no such remote; files still failing after ``attempts`` fetches (names
            the remote and its URL); a fetched object that differs from its key.
    """
    from dvc.repo import Repo

    name, url = _remote_of(repo_root, remote)
    retries = _Retries(attempts, first_delay, max_delay, s3_attempts, sleep)
    where = f"remote {name} ({url})"
    moved, tries = retries.run(
        f"dvc fetch from {where}",
        lambda: _dvc("fetch", repo_root, targets=targets, remote=name, jobs=jobs),
    )
    logger.info("dvc fetch from %s: %d objects in %d attempts", where, moved, tries)
    checked = verify_cache(repo_root, targets=targets)
    with Repo(str(repo_root)) as repo:
        repo.checkout(targets=targets, force=True)
    logger.info("checked out %d verified objects in %s", checked, repo_root)
    return SyncResult(remote=name, url=url, transferred=moved, attempts=tries, verified=checked)
