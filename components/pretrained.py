"""The pretrained DenseNet weights of a run: fetched and checked before training starts, and
recorded in the run's lineage.

:func:`ensure_pretrained` is what ``cxrgaze run`` calls before the pipeline starts and what the
first training step calls before it trains: the weights the config names are fetched into
torch.hub's cache if need be and checked (:func:`model_lib.models.check_pretrained`), so a run
without reachable weights stops in seconds with one line saying how to get them. An ``s3://``
source (an object store on a cluster) is fetched here, into the same cache under the object's
name, and the step trains from that local copy; model_lib never talks to an object store.

The lineage tags: ``pretrained_weights`` (``DenseNet201_Weights.IMAGENET1K_V1``, the path or URI
given, or ``random initialisation``) and ``pretrained_sha256`` (the file's full sha256).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from model_lib.config import DENSENET_ARCHS, ModelConfig
from model_lib.models import PretrainedWeights, WeightsHashMismatch, WeightsUnavailable
from model_lib.models import check_pretrained as check_model_weights
from model_lib.models.pretrained import RANDOM_INIT, hub_checkpoints_dir, published_hash, sha256_of

logger = logging.getLogger(__name__)

PRETRAINED_TAG = "pretrained_weights"
PRETRAINED_SHA256_TAG = "pretrained_sha256"
S3_ATTEMPTS = 2
"""Tries per S3 request: a missing object or a dead endpoint must fail in seconds."""


def fetch_s3_weights(uri: str) -> Path:
    """The local copy of an ``s3://`` weights file in torch.hub's cache (under the object's
    name), downloaded when absent and checked against the hash in its name before it is kept.

    Raises:
        WeightsUnavailable: the object cannot be read (one line naming it).
        WeightsHashMismatch: its sha256 differs from the hash in its name.
    """
    from components.data_transfer import _filesystem, s3_retries

    name = PurePosixPath(urlparse(uri).path).name
    if not name:
        raise ValueError(f"{uri}: names no file")
    cached = hub_checkpoints_dir() / name
    if cached.is_file():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.", dir=cached.parent) as tmp:
        local = Path(tmp) / name
        try:
            with s3_retries(S3_ATTEMPTS):
                _filesystem(uri).get_file(uri, str(local))
        except Exception as err:  # s3fs and botocore raise many kinds for one failed read
            raise WeightsUnavailable(
                f"pretrained DenseNet weights {uri} unavailable ({type(err).__name__}: {err}); "
                f"check the URI and the AWS_* settings, or put {name} into {cached.parent} "
                "(TORCH_HOME), or --set model.pretrained_weights=PATH"
            ) from err
        sha = sha256_of(local)
        if (expected := published_hash(name)) is not None and not sha.startswith(expected):
            raise WeightsHashMismatch(
                f"{uri}: sha256 {sha} does not start with {expected}, the hash in its name: a "
                "corrupt or substituted file, refused (nothing cached)"
            )
        local.replace(cached)
    logger.info("fetched %s into %s", uri, cached)
    return cached


def ensure_pretrained(
    model: ModelConfig, overrides: Sequence[str] = ()
) -> tuple[ModelConfig, list[str], PretrainedWeights | None]:
    """Fetch (an ``s3://`` source into torch.hub's cache first) and check the weights a model
    config names; returns the config and the overrides to train with (an ``s3://`` source
    replaced by its local copy) and the weights, None for random initialisation.

    Raises:
        WeightsUnavailable (a FileNotFoundError): one line saying how to get the weights.
        ValueError: a weights file with the wrong hash or of another variant (names it).
    """
    overrides = list(overrides)
    source = model.pretrained_weights
    if model.arch in DENSENET_ARCHS and source is not None and source.lower().startswith("s3://"):
        local = str(fetch_s3_weights(source))
        overrides.append(f"model.pretrained_weights={local}")
        model = model.model_copy(update={"pretrained_weights": local})
    weights = check_model_weights(model)
    if weights is not None and source != model.pretrained_weights:
        weights = replace(weights, source=str(source), label=str(source))
    if weights is not None:
        logger.info("DenseNet branch will start from %s", weights.describe())
    elif model.arch in DENSENET_ARCHS:
        logger.info("%s: %s (model.pretrained_weights is null)", model.backbone, RANDOM_INIT)
    return model, overrides, weights


def pretrained_lineage(model: ModelConfig, weights: PretrainedWeights | None) -> dict[str, str]:
    """Lineage tags of a run's starting weights; empty for an arch without DenseNet."""
    if model.arch not in DENSENET_ARCHS:
        return {}
    if weights is None:
        return {PRETRAINED_TAG: RANDOM_INIT}
    return {PRETRAINED_TAG: weights.label, PRETRAINED_SHA256_TAG: weights.sha256}
