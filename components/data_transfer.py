"""Bulk data between pipeline steps by URI: the packed store and the gaze maps go to an object
store once, and the KFP artifacts the DAG passes around hold only a pointer to them.

On a cluster, copying gigabytes of images through KFP artifacts for every training step is slow
and fills the artifact store with copies; with ``data_remote`` set (``s3://bucket/prefix``),
the ingest and heatmaps steps upload their output under ``<remote>/<md5 of the folder>/`` (the
content address: the same data is stored once) and leave ``remote.json`` in the artifact. A
consuming step calls :func:`materialize`, which downloads the folder into a local cache and
checks every file's md5 before anyone reads it. Without ``data_remote`` (the local default) the
artifact is the folder itself and nothing moves.

The object store is reached through fsspec (``s3fs``, the library DVC's S3 remote uses), with
the standard AWS variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and, for MinIO or
another S3-compatible server, ``AWS_ENDPOINT_URL``.

Riding out an object store that goes away for a while (a restart, a failover): inside
:func:`s3_retries`, S3 clients made by boto3, or by aiobotocore under s3fs and DVC, retry
connection errors, 5xx answers and throttling in botocore's ``standard`` mode (exponential
backoff with jitter, at most 20 s a wait); :func:`retry_call` retries a whole operation that is
safe to repeat, with its own exponential backoff.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from model_lib.data.fingerprint import tree_digest

logger = logging.getLogger(__name__)

POINTER_FILE = "remote.json"
CACHE_ENV = "CXRGAZE_DATA_CACHE"
_CHUNK = 1 << 20
RETRY_MODE_ENV, MAX_ATTEMPTS_ENV = "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"
DEFAULT_S3_ATTEMPTS = 8
"""Per S3 request in ``standard`` mode: waits of up to 1, 2, 4, 8, 16, 20, 20 s (random
jitter), so about a minute at worst before a request gives up."""
T = TypeVar("T")


class TransferError(RuntimeError):
    """A pointed-to folder is missing from the object store or does not match its pointer."""


@contextmanager
def s3_retries(max_attempts: int = DEFAULT_S3_ATTEMPTS) -> Iterator[None]:
    """botocore's ``standard`` retry mode with ``max_attempts`` for the S3 clients made inside
    the block (botocore reads ``AWS_RETRY_MODE`` and ``AWS_MAX_ATTEMPTS`` when it makes a
    client). Values already in the environment are an operator's choice and are kept."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    wanted = {RETRY_MODE_ENV: "standard", MAX_ATTEMPTS_ENV: str(max_attempts)}
    added = [key for key in wanted if key not in os.environ]
    os.environ.update({key: wanted[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def backoff_delays(attempts: int, first_delay: float, max_delay: float) -> list[float]:
    """The waits between ``attempts`` tries: ``first_delay`` doubling each time, capped."""
    if attempts < 1 or first_delay < 0 or max_delay < 0:
        raise ValueError(
            f"attempts >= 1 and non-negative delays, got {attempts}, {first_delay}, {max_delay}"
        )
    return [min(first_delay * 2**i, max_delay) for i in range(attempts - 1)]


def retry_call(
    action: Callable[[], T],
    *,
    what: str,
    attempts: int,
    first_delay: float,
    max_delay: float = 60.0,
    retry_on: tuple[type[BaseException], ...],
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``action()``, tried up to ``attempts`` times while it raises one of ``retry_on``, waiting
    :func:`backoff_delays` between tries. Only for actions that are safe to repeat.

    Raises:
        The last error once the attempts are spent; any other error at once.
    """
    delays = backoff_delays(attempts, first_delay, max_delay)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except retry_on as err:
            if attempt == attempts:
                raise
            delay = delays[attempt - 1]
            logger.warning(
                "%s: attempt %d of %d failed (%s: %s); again in %.1f s",
                what, attempt, attempts, type(err).__name__, err, delay,
            )  # fmt: skip
            sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _filesystem(uri: str) -> Any:
    import fsspec

    protocol = uri.split("://", 1)[0] if "://" in uri else "file"
    if protocol == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        return fsspec.filesystem("s3", client_kwargs={"endpoint_url": endpoint} if endpoint else {})
    return fsspec.filesystem(protocol)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): _md5(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def publish(folder: Path, remote: str, artifact: Path) -> dict[str, Any]:
    """Upload ``folder`` to ``<remote>/<md5>/`` and write the pointer into ``artifact`` (a
    folder, created); returns the pointer. Objects already there with the right content are
    not uploaded again.

    Raises:
        ValueError: ``remote`` is not a URI.
    """
    if "://" not in remote:
        raise ValueError(f"data_remote {remote!r} is not a URI such as s3://bucket/prefix")
    folder = Path(folder)
    digest = tree_digest(folder)
    uri = f"{remote.rstrip('/')}/{digest}"
    files = _files(folder)
    with s3_retries():
        fs = _filesystem(uri)
        for rel in files:
            target = f"{uri}/{rel}"
            if fs.exists(target) and fs.size(target) == (folder / rel).stat().st_size:
                continue
            fs.put_file(str(folder / rel), target)
    pointer = {"uri": uri, "md5": digest, "files": files}
    artifact = Path(artifact)
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / POINTER_FILE).write_text(json.dumps(pointer, indent=2) + "\n", encoding="utf-8")
    logger.info("published %s (%d files, md5 %s) to %s", folder, len(files), digest, uri)
    return pointer


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "cxr-gaze-data")


def materialize(artifact: Path) -> Path:
    """The local folder an artifact stands for: the artifact itself, or, when it holds a
    pointer, a verified local copy of the pointed-to folder (downloaded once per content into
    ``$CXRGAZE_DATA_CACHE``, by default under the system temp folder).

    Raises:
        TransferError: an object is missing, or a downloaded file's md5 differs from the
            pointer's (the message names the file); nothing half-downloaded is kept.
    """
    artifact = Path(artifact)
    pointer_path = artifact / POINTER_FILE
    if not pointer_path.is_file():
        return artifact
    pointer = json.loads(pointer_path.read_text(encoding="utf-8"))
    local = _cache_root() / pointer["md5"]
    if local.is_dir():
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{pointer['md5']}-", dir=local.parent))
    try:
        with s3_retries():
            fs = _filesystem(pointer["uri"])
            for rel, md5 in pointer["files"].items():
                source = f"{pointer['uri']}/{rel}"
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fs.get_file(source, str(target))
                except FileNotFoundError as err:
                    raise TransferError(f"{source}: missing from the object store") from err
                if (got := _md5(target)) != md5:
                    raise TransferError(
                        f"{source}: md5 {got}, the pointer {pointer_path} says {md5}"
                    )
        try:
            staging.rename(local)
        except OSError:
            if not local.is_dir():  # not another process that got there first
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("fetched %s into %s", pointer["uri"], local)
    return local
