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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from model_lib.data.fingerprint import tree_digest

logger = logging.getLogger(__name__)

POINTER_FILE = "remote.json"
CACHE_ENV = "CXRGAZE_DATA_CACHE"
_CHUNK = 1 << 20


class TransferError(RuntimeError):
    """A pointed-to folder is missing from the object store or does not match its pointer."""


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
                raise TransferError(f"{source}: md5 {got}, the pointer {pointer_path} says {md5}")
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
