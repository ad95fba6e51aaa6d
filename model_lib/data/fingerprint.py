"""Content fingerprints of folders: what a dataset *is*, independent of where it lies.

The digest covers every regular file's path relative to the root and its bytes, in sorted order,
so renaming, adding, removing or editing any file changes it, and copying the folder elsewhere
does not. Used to key pipeline caching on the raw data and to tag models with the md5 of the
processed data they were trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def tree_digest(root: Path, algorithm: str = "md5") -> str:
    """Hex digest of every file under ``root`` (paths and contents; symlinks followed).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder to fingerprint")
    digest = hashlib.new(algorithm)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix().encode()
        # Length-prefixed fields: no two different trees serialise to the same stream.
        digest.update(len(rel).to_bytes(8, "little") + rel)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
