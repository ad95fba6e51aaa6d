"""Compile the training pipeline to KFP IR YAML, bound to a project image.

Components are declared against a placeholder image (:mod:`components.kfp_step`); the image
that runs them is chosen here, at compile time, so one source tree serves every registry and
tag. The output is deterministic for a given source tree and image: the compiler's timestamps
are not part of the IR, so a fresh compile can be diffed against a golden copy.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from components.kfp_step import PLACEHOLDER_IMAGE

if TYPE_CHECKING:
    from pipelines.training_pipeline import ClusterOptions

DEFAULT_IMAGE = "ghcr.io/cxr-gaze/cxr-gaze:0.1.0"
CLUSTER_RETRIES = 2
"""Retries of a failed training step on the cluster (evicted or killed pods resume from the
checkpoint volume)."""
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")
"""Lower-case registry/repository[:tag][@digest], as container runtimes accept them."""


def compile_pipeline(
    out: Path,
    image: str = DEFAULT_IMAGE,
    gpus: int = 1,
    retries: int = CLUSTER_RETRIES,
    options: ClusterOptions | None = None,
) -> Path:
    """Write the IR YAML of the training pipeline to ``out`` with every step on ``image``,
    ``gpus`` GPUs per training step, ``retries`` retries of a failed training step and the
    cluster ``options`` (Secret names, training deadline; defaults: :class:`ClusterOptions`).

    Raises:
        ValueError: ``image`` is not a container image reference, or ``gpus`` < 1.
    """
    from kfp import compiler

    from pipelines.training_pipeline import make_training_pipeline

    training_pipeline = make_training_pipeline(gpus, retries, options)

    if not _IMAGE_REF.match(image):
        raise ValueError(f"image {image!r} is not a container image reference")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(training_pipeline, str(raw))
        documents = list(yaml.safe_load_all(raw.read_text(encoding="utf-8")))
    executors = documents[0]["deploymentSpec"]["executors"]
    for executor in executors.values():
        container = executor["container"]
        if container["image"] != PLACEHOLDER_IMAGE:
            raise AssertionError(f"unexpected image {container['image']!r} in the IR")
        container["image"] = image
    text = yaml.safe_dump_all(documents, sort_keys=True, width=100)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(text, encoding="utf-8")
    tmp_out.replace(out)
    return out
