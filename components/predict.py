"""Predict with a registered model: DICOM / PNG / JPEG files in, one JSON and one overlay PNG out
per image.

The model is loaded through :func:`~components.model_package.load_registered_model` (so its
weights' sha256 is checked) and every image is brought to the model's grid with
:func:`model_lib.data.preprocess.preprocess_image` and the ``geometry`` stored in the package:
the function and the object ingest used to make the evaluation store.

Output names: ``<stem>.json`` and ``<stem>_overlay.png``. Inputs that share a stem are named
``<parent>__<stem>`` (the folder they sit in) instead; if that still collides, ``-2``, ``-3``,
... is appended in input order (the arguments' order, a folder's files sorted by path). Each
file is written to a temporary name and renamed, the overlay before the JSON, so a JSON file
means its pair is complete. Outputs of an earlier run with the same names are replaced.

A file that cannot be read or predicted is reported by name and the others are still written
(:attr:`PredictSummary.failed`; the CLI then exits with status 2). A path that does not exist,
an explicitly named file of an unsupported kind, or no image at all fails before the model loads.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from components.model_package import load_registered_model, parse_model_uri
from components.overlay import image_box, render_overlay
from components.registry import CHAMPION, MODEL_NAME, WEIGHTS_SHA256_TAG
from model_lib.config import GeometryConfig
from model_lib.data.dicom_io import DICOM_SUFFIXES, RASTER_SUFFIXES
from model_lib.data.errors import DataError
from model_lib.data.geometry import CanvasTransform
from model_lib.data.preprocess import preprocess_image

logger = logging.getLogger(__name__)

DEFAULT_MODEL_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
IMAGE_SUFFIXES: tuple[str, ...] = DICOM_SUFFIXES + RASTER_SUFFIXES
BATCH = 16
"""Images preprocessed and predicted together: bounds memory for long lists of large files."""


@dataclass(frozen=True)
class LoadedModel:
    """A registered version loaded once: the pyfunc, where it came from, how it preprocesses."""

    pyfunc: PyFuncModel
    version: ModelVersion
    model_uri: str
    geometry: GeometryConfig
    class_names: tuple[str, ...]

    def describe(self) -> dict[str, Any]:
        """Name, version, the URI asked for (and its alias, if any), the weights' sha256."""
        _, alias, _ = parse_model_uri(self.model_uri)
        return {
            "name": self.version.name,
            "version": str(self.version.version),
            "uri": self.model_uri,
            "alias": alias,
            "weights_sha256": self.version.tags.get(WEIGHTS_SHA256_TAG),
        }


@contextmanager
def open_model(model_uri: str, tracking_uri: str) -> Iterator[LoadedModel]:
    """Download, check and load a registered version; its files are removed on exit.

    Raises:
        ValueError: not a ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` URI.
        LookupError: no such alias or version.
        WeightsIntegrityError: the weights do not have the registered sha256.
        RegistryUnreachable: the tracking server does not answer.
    """
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-model-") as tmp:
        pyfunc, version = load_registered_model(
            model_uri, tracking_uri=tracking_uri, dst_path=Path(tmp)
        )
        wrapped = pyfunc.unwrap_python_model()
        logger.info("loaded %s (version %s) from %s", model_uri, version.version, tracking_uri)
        yield LoadedModel(
            pyfunc=pyfunc,
            version=version,
            model_uri=model_uri,
            geometry=wrapped.geometry,
            class_names=tuple(wrapped.class_names),
        )


@dataclass(frozen=True)
class Prediction:
    """One image through the model: ``image`` (H, W) as preprocessed, ``probabilities`` (C,),
    ``saliency`` (H, W) summing to 1, and the transform from the native image."""

    image: np.ndarray
    probabilities: np.ndarray
    saliency: np.ndarray
    transform: CanvasTransform

    def record(self, model: LoadedModel) -> dict[str, Any]:
        """Class probabilities by name, the predicted class, the model and the input geometry."""
        probs = {
            name: float(p) for name, p in zip(model.class_names, self.probabilities, strict=True)
        }
        best = int(np.argmax(self.probabilities))
        return {
            "predicted_class": model.class_names[best],
            "probability": float(self.probabilities[best]),
            "probabilities": probs,
            "model": model.describe(),
            "input": {
                "native_hw": [self.transform.native_h, self.transform.native_w],
                "geometry": model.geometry.model_dump(mode="json"),
                "transform": self.transform.to_dict(),
            },
        }

    def overlay_png(self, model: LoadedModel, source_name: str) -> bytes:
        """The saliency over the image, cropped to the image's own area, with a legend."""
        record = self.record(model)
        title = (
            f"{record['predicted_class']} {record['probability']:.1%} | "
            f"{model.version.name} v{model.version.version}\n{source_name}"
        )
        return render_overlay(self.image, self.saliency, title, image_box(self.transform))


def predict_images(model: LoadedModel, images: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Preprocessed images, each (H, W) in [0, 1] -> (probabilities (B, C), saliency (B, H, W))
    from the pyfunc (so its signature and range checks apply)."""
    batch = np.stack([np.asarray(image, dtype=np.float32) for image in images])[:, None]
    out = model.pyfunc.predict(batch)
    return np.asarray(out["probabilities"]), np.asarray(out["saliency"])


def predict_file(model: LoadedModel, path: Path) -> Prediction:
    """One image file through :func:`preprocess_image` and the model."""
    image, transform, _ = preprocess_image(path, model.geometry)
    probs, maps = predict_images(model, [image])
    return Prediction(image, probs[0], maps[0], transform)


def expand_inputs(paths: Sequence[Path]) -> tuple[list[Path], int]:
    """The image files named, and those found recursively in the folders named (sorted), each
    once; plus how many other files the folders held (skipped).

    Raises:
        FileNotFoundError: a path does not exist.
        DataError: a file named explicitly is not .dcm/.dicom/.png/.jpg/.jpeg.
        ValueError: no image at all.
    """
    found: list[Path] = []
    skipped = 0
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
                if candidate.suffix.lower() in IMAGE_SUFFIXES:
                    found.append(candidate)
                else:
                    skipped += 1
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    path, f"unsupported file type {path.suffix!r}: expected one of {IMAGE_SUFFIXES}"
                )
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    files = []
    for path in found:  # a file named twice, or also inside a named folder, counts once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            files.append(path)
    if not files:
        raise ValueError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}"
            f" ({skipped} other files skipped)"
        )
    return files, skipped


def output_names(files: Sequence[Path]) -> list[str]:
    """Output base names: the stem, ``<parent>__<stem>`` for shared stems, then ``-N`` suffixes
    for what still collides (see the module docstring)."""
    stems = Counter(p.stem for p in files)
    taken: set[str] = set()
    names = []
    for path in files:
        base = path.stem if stems[path.stem] == 1 else f"{path.parent.name}__{path.stem}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name)
        names.append(name)
    return names


@dataclass(frozen=True)
class Written:
    source: Path
    json_path: Path
    overlay_path: Path
    predicted_class: str
    probability: float


@dataclass
class PredictSummary:
    """What :func:`run_predict` wrote, which files failed (with why) and how many it skipped."""

    model: dict[str, Any]
    out_dir: Path
    written: list[Written] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: int = 0

    def describe(self) -> str:
        """One line per written image, then the counts (failures are listed by the caller)."""
        lines = [
            f"{w.source} -> {w.json_path.name}: {w.predicted_class} ({w.probability:.1%})"
            for w in self.written
        ]
        lines.append(
            f"{len(self.written)} predicted, {len(self.failed)} failed, {self.skipped} skipped "
            f"(not images) with {self.model['name']} v{self.model['version']}; outputs in "
            f"{self.out_dir}"
        )
        return "\n".join(lines)


def run_predict(
    paths: Sequence[Path],
    out_dir: Path,
    *,
    model_uri: str = DEFAULT_MODEL_URI,
    tracking_uri: str,
) -> PredictSummary:
    """Predict every image under ``paths`` and write ``out_dir/<name>.json`` and
    ``out_dir/<name>_overlay.png`` for each (see the module docstring for names and failures).
    """
    parse_model_uri(model_uri)  # a malformed URI fails before any file is looked at
    files, skipped = expand_inputs(paths)
    names = output_names(files)
    out_dir = Path(out_dir)
    with open_model(model_uri, tracking_uri) as model:
        summary = PredictSummary(model=model.describe(), out_dir=out_dir, skipped=skipped)
        out_dir.mkdir(parents=True, exist_ok=True)
        for start in range(0, len(files), BATCH):
            chunk = list(
                zip(files[start : start + BATCH], names[start : start + BATCH], strict=True)
            )
            _predict_chunk(model, chunk, out_dir, summary)
            logger.info("predicted %d of %d images", min(start + BATCH, len(files)), len(files))
    return summary


def _predict_chunk(
    model: LoadedModel, chunk: list[tuple[Path, str]], out_dir: Path, summary: PredictSummary
) -> None:
    ready: list[tuple[Path, str, np.ndarray, CanvasTransform]] = []
    for path, name in chunk:
        try:
            image, transform, _ = preprocess_image(path, model.geometry)
        except (DataError, ValueError, OSError) as err:
            summary.failed.append((path, _reason(err, path)))
            continue
        ready.append((path, name, image, transform))
    if not ready:
        return
    try:
        probs, maps = predict_images(model, [image for _, _, image, _ in ready])
    except (ValueError, MlflowException) as err:
        summary.failed.extend((path, f"model refused the image: {err}") for path, *_ in ready)
        return
    for (path, name, image, transform), p, m in zip(ready, probs, maps, strict=True):
        prediction = Prediction(image, p, m, transform)
        try:
            summary.written.append(_write_outputs(model, prediction, path, out_dir / name))
        except (OSError, ValueError) as err:
            summary.failed.append((path, _reason(err, path)))


def _write_outputs(model: LoadedModel, prediction: Prediction, source: Path, base: Path) -> Written:
    overlay_path = base.with_name(f"{base.name}_overlay.png")
    json_path = base.with_name(f"{base.name}.json")
    record = {"source": str(source), **prediction.record(model), "overlay": overlay_path.name}
    png = prediction.overlay_png(model, source.name)
    text = json.dumps(record, indent=2) + "\n"
    write_atomic(overlay_path, png)
    try:
        write_atomic(json_path, text.encode("utf-8"))
    except OSError:
        overlay_path.unlink(missing_ok=True)  # no overlay without its JSON
        raise
    return Written(
        source, json_path, overlay_path, record["predicted_class"], record["probability"]
    )


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    # Not mkstemp: its files are private (0600); outputs get the usual umask permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _reason(err: Exception, path: Path) -> str:
    """The error without a leading copy of the file name (the report names the file)."""
    if isinstance(err, DataError) and err.file == str(path) and err.row is None:
        return f"field '{err.field}': {err.message}" if err.field else err.message
    return str(err).removeprefix(f"{path}: ")
