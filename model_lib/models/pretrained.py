"""Where pretrained DenseNet weights come from, checked before any tensor of them is used.

``ModelConfig.pretrained_weights`` names a source:

- ``imagenet`` (the default of the DenseNet archs): torchvision's
  ``DenseNet201_Weights.IMAGENET1K_V1`` (``DenseNet121_Weights`` for a densenet121 backbone), the
  file ``torchvision.models.densenet201(weights=...)`` loads, found where torchvision keeps it:
  torch.hub's cache ``$TORCH_HOME/hub/checkpoints/`` (``~/.cache/torch/hub/checkpoints`` by
  default), else downloaded there from ``download.pytorch.org``, or from
  ``$CXRGAZE_WEIGHTS_MIRROR`` (a base ``http(s)://`` or ``file://`` URL, or a folder, that holds
  torchvision's files under their own names) on a cluster without internet access.
- ``http(s)://.../name.pth``: downloaded once into the same cache, under its own name (as
  ``torch.hub.load_state_dict_from_url`` does).
- a local path or a ``file://`` URI: used where it is.
- ``s3://``: fetched by the pipeline's training step (``components.pretrained``), which passes
  the local copy on; model_lib never talks to an object store.

Every file whose name carries torchvision's hash (``densenet201-c1103571.pth``: the first hex
digits of its sha256) is checked against it: on download, as torch.hub does, and also when it
comes from the cache or a local path, which torch.hub trusts. A file whose name carries no hash
is used as it is, its sha256 recorded; either way the loader then refuses anything but a state
dict of the backbone's variant. A download waits at most ``$CXRGAZE_WEIGHTS_TIMEOUT`` seconds
(10 by default) for the server at each step, and a source that cannot be had raises
:class:`WeightsUnavailable`: one line saying where to get the file and where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse
from urllib.request import Request, url2pathname, urlopen

import torch.hub
from torchvision.models import DenseNet121_Weights, DenseNet201_Weights, WeightsEnum

from model_lib.config import IMAGENET_WEIGHTS

logger = logging.getLogger(__name__)

MIRROR_ENV = "CXRGAZE_WEIGHTS_MIRROR"
TIMEOUT_ENV = "CXRGAZE_WEIGHTS_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0
RANDOM_INIT = "random initialisation"
"""How a run records a DenseNet that starts from random weights (``pretrained_weights: null``)."""

_IMAGENET: dict[str, WeightsEnum] = {
    "densenet121": DenseNet121_Weights.IMAGENET1K_V1,
    "densenet201": DenseNet201_Weights.IMAGENET1K_V1,
}
# torch.hub's HASH_REGEX takes any run of hex digits; a published name has at least 8.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_CHUNK = 1 << 20
_FIX = "--set model.pretrained_weights=PATH|URI, or null for random initialisation"


class WeightsUnavailable(FileNotFoundError):
    """The weights a config names are neither here nor reachable; the one-line message says
    where to get them and where to put them."""


class WeightsHashMismatch(ValueError):
    """A weights file whose sha256 does not start with the hash in its name; the message names
    the file."""


@dataclass(frozen=True)
class PretrainedWeights:
    """A weights file ready to load: ``path`` on this machine, its full ``sha256``, ``source`` as
    the config gave it, ``label`` for people (``DenseNet201_Weights.IMAGENET1K_V1`` or the
    source), ``url`` it was (or would be) downloaded from, and ``verified`` when its sha256
    matched the hash in its name."""

    source: str
    label: str
    variant: str
    path: Path
    sha256: str
    url: str | None
    verified: bool

    def describe(self) -> str:
        """One line for logs: what, from where, which bytes."""
        check = "hash in name checked" if self.verified else "no hash in name"
        return (
            f"{self.variant} weights {self.label} from {self.path} (sha256 {self.sha256}, {check})"
        )


def imagenet_weights(variant: str) -> WeightsEnum:
    """torchvision's ImageNet weights enum member of a DenseNet variant."""
    if variant not in _IMAGENET:
        raise ValueError(f"no ImageNet weights for {variant!r}; known: {sorted(_IMAGENET)}")
    return _IMAGENET[variant]


def hub_checkpoints_dir() -> Path:
    """torch.hub's cache folder for weights: ``<torch.hub.get_dir()>/checkpoints``, i.e.
    ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_timeout() -> float:
    """``$CXRGAZE_WEIGHTS_TIMEOUT`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return value


def published_hash(name: str) -> str | None:
    """The sha256 prefix torchvision puts in a file name (``densenet121-a639ec97.pth`` ->
    ``a639ec97``), None when the name carries none."""
    match = _HASH_IN_NAME.search(name)
    return match.group(1) if match else None


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _checked(path: Path, where: str) -> tuple[str, bool]:
    """(sha256, whether a hash in the name was checked) of a file on this machine."""
    sha = sha256_of(path)
    expected = published_hash(path.name)
    if expected is not None and not sha.startswith(expected):
        raise WeightsHashMismatch(
            f"{path}: sha256 {sha} does not start with {expected}, the hash in its name "
            f"({where}): a corrupt or substituted file, refused; delete it and fetch the file "
            "again"
        )
    return sha, expected is not None


def _local_path(location: str) -> Path | None:
    """A plain path or ``file://`` URI as a Path; None for a remote URL."""
    parsed = urlparse(location)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"{location}: file:// URIs must name a local file")
        return Path(url2pathname(parsed.path))
    # A one-letter scheme is a Windows drive, not a URL.
    if parsed.scheme and len(parsed.scheme) > 1:
        return None
    return Path(location)


def _download(url: str, target: Path, timeout: float) -> str:
    """``url`` into ``target`` through a temporary file beside it; returns its sha256. The hash
    in the name is checked before the file takes its name: nothing half-written or refused is
    left behind."""
    if urlparse(url).scheme.lower() not in ("http", "https"):
        raise ValueError(f"{url}: only http(s) URLs are downloaded")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            request = Request(url, headers={"User-Agent": "cxr-gaze"})
            with urlopen(request, timeout=timeout) as response:  # nosec B310  # http(s) checked
                total = int(response.headers.get("Content-Length") or 0)
                done, shown = 0, 0
                logger.info("downloading %s to %s (%.1f MB)", url, target, total / 1e6)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if total and done * 10 // total > shown:
                        shown = done * 10 // total
                        logger.info("  %s: %d%%", target.name, shown * 10)
        sha = digest.hexdigest()
        expected = published_hash(target.name)
        if expected is not None and not sha.startswith(expected):
            raise WeightsHashMismatch(
                f"{url}: downloaded sha256 {sha} does not start with {expected}, the hash in its "
                "name: a corrupt or substituted file, refused (nothing cached)"
            )
        tmp.replace(target)
        return sha
    finally:
        tmp.unlink(missing_ok=True)


def _reason(err: BaseException) -> str:
    if isinstance(err, URLError) and not isinstance(err, HTTPError):
        return str(err.reason)
    return str(err) or type(err).__name__


def _mirror() -> str:
    """``$CXRGAZE_WEIGHTS_MIRROR``: a folder, ``file://`` or ``http(s)://`` base URL, or ""."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    scheme = urlparse(mirror).scheme.lower()
    # A one-letter scheme is a Windows drive.
    if len(scheme) > 1 and scheme not in ("file", "http", "https"):
        raise ValueError(f"{MIRROR_ENV}={mirror!r}: expected a folder, file:// or http(s):// URL")
    return mirror


def _from_url(
    url: str, what: str, timeout: float | None, origin: str | None = None
) -> tuple[Path, str, bool]:
    """The copy of ``url`` in torch.hub's cache, downloaded when absent; (path, sha256,
    whether the hash in its name was checked). ``origin`` is where the file is published, for
    the message when it cannot be had."""
    name = Path(urlparse(url).path).name
    if not name:
        raise ValueError(f"{url}: names no file")
    cached = hub_checkpoints_dir() / name
    if cached.is_file():
        logger.info("%s: found in the torch.hub cache %s", what, cached)
        sha, verified = _checked(cached, f"cached copy of {url}")
        return cached, sha, verified
    try:
        sha = _download(url, cached, download_timeout() if timeout is None else timeout)
    except (OSError, HTTPException) as err:
        raise WeightsUnavailable(
            f"{what} unavailable: {url} failed ({_reason(err)}) and {cached} is absent; put "
            f"{origin or url} there (TORCH_HOME sets the folder), set {MIRROR_ENV} to a folder "
            f"or URL holding {name}, or {_FIX}"
        ) from err
    logger.info("%s: downloaded to %s", what, cached)
    return cached, sha, published_hash(name) is not None


def _from_file(path: Path, what: str) -> tuple[Path, str, bool]:
    if not path.is_file():
        raise WeightsUnavailable(f"{what} not found: {path}; {_FIX}")
    sha, verified = _checked(path, "local file")
    return path, sha, verified


def resolve_pretrained(
    source: str, variant: str, *, timeout: float | None = None
) -> PretrainedWeights:
    """The local, hash-checked file of the DenseNet weights ``source`` names (see the module
    docstring), downloaded into torch.hub's cache first when needed.

    Args:
        source: ``imagenet``, a local path, a ``file://`` or ``http(s)://`` URI.
        variant: the backbone, ``densenet121`` or ``densenet201``.
        timeout: seconds to wait on the server at each step (default
            :func:`download_timeout`).

    Raises:
        WeightsUnavailable: no such file, or not cached and the download failed (one line).
        WeightsHashMismatch: the file's sha256 differs from the hash in its name (names it).
        ValueError: a source model_lib does not fetch (``s3://``) or an unknown variant.
    """
    if source == IMAGENET_WEIGHTS:
        weights = imagenet_weights(variant)
        label = f"{type(weights).__name__}.{weights.name}"
        name = Path(urlparse(weights.url).path).name
        what = f"{variant} ImageNet weights {label}"
        mirror = _mirror()
        local_mirror = _local_path(mirror) if mirror else None
        if local_mirror is not None and not (hub_checkpoints_dir() / name).is_file():
            path, sha, verified = _from_file(local_mirror / name, f"{what} (mirror {mirror})")
            return PretrainedWeights(source, label, variant, path, sha, None, verified)
        url = f"{mirror.rstrip('/')}/{name}" if mirror else weights.url
        path, sha, verified = _from_url(url, what, timeout, origin=weights.url)
        return PretrainedWeights(source, label, variant, path, sha, url, verified)
    local = _local_path(source)
    if local is not None:
        path, sha, verified = _from_file(local, "pretrained DenseNet weights")
        return PretrainedWeights(source, source, variant, path, sha, None, verified)
    scheme = urlparse(source).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(
            f"{source}: model_lib reads local files and http(s) URLs; {scheme}:// weights are "
            "fetched by the pipeline's training step (components.pretrained) first"
        )
    path, sha, verified = _from_url(source, f"pretrained DenseNet weights {source}", timeout)
    return PretrainedWeights(source, source, variant, path, sha, source, verified)
