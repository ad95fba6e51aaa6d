"""Ingest step: read an EGD-CXR release, validate it, pack it into the training store.

The validation report is written either way: inside the store on success, beside it
(``<out>.validation.{json,html}``) on failure, so a failed ingest leaves no dataset behind.
Warnings (off-screen gaze, missing audio, ...) are logged one line each and never stop the step;
errors stop it before any image is packed. A failure of one image (an unreadable DICOM, pixel
data that does not decode) is one DataError line naming its dicom_id and its file.

Identifying DICOM header fields (``data.phi_policy``): only the whitelisted header fields are ever
read out of a DICOM, so their values never reach the store, the report or the logs. Validation
names the files that fill them, by field name: an error under "fail", a warning under "strip".
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from kfp.dsl import HTML, Dataset, Output

from components.ingest_checks import ValidationFailed, validate_egd
from components.kfp_step import step_component
from model_lib.config import DataConfig
from model_lib.data.egd_cxr import load_egd_cxr, naming_images
from model_lib.data.packing import pack_dataset, read_image_headers
from model_lib.data.splits import assign_splits

log = logging.getLogger(__name__)

EGD_DIR, IMAGES_DIR = "egd-cxr", "mimic-cxr"
"""A raw release folder holds the EGD-CXR tables and the MIMIC-CXR images side by side."""


@dataclass(frozen=True)
class IngestResult:
    store: Path
    split_counts: dict[str, int]
    report_json: Path
    report_html: Path
    warnings: int = 0

    def describe(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        return (f"packed store {self.store} ({counts}); validation report {self.report_html} "
                f"({self.warnings} warning(s))")  # fmt: skip


def run_ingest(
    egd_root: Path,
    images_root: Path,
    out: Path,
    cfg: DataConfig,
    *,
    workers: int = 2,
    expected_images: int | None = None,
    progress: bool = True,
) -> IngestResult:
    out = Path(out)
    tables = load_egd_cxr(Path(egd_root), Path(images_root))
    log.info("read %d images, %d gaze samples, %d fixations from %s", len(tables.master),
             len(tables.gaze), len(tables.fixations), egd_root)  # fmt: skip
    with naming_images(tables):
        headers, identifying = read_image_headers(tables)
    report = validate_egd(tables, headers, expected_images=expected_images,
                          limits=cfg.validation, identifying=identifying,
                          phi_policy=cfg.phi_policy)  # fmt: skip
    # One line each; under phi_policy "strip" the PHI_SUITE lines name fields, never values.
    for check in report.warnings:
        log.warning("%s", check.line())
    if not report.success:
        failed_json, failed_html = _report_paths(out.parent, f"{out.name}.validation")
        report.write(failed_json, failed_html)
        raise ValidationFailed(report, failed_html)
    splits = assign_splits(tables.master, cfg.split)
    with naming_images(tables):
        summary = pack_dataset(
            tables,
            splits,
            cfg.scaled_geometry(),
            out,
            workers=workers,
            progress=progress,
            params={"data": cfg.model_dump(mode="json"), "egd_root": str(egd_root)},
            write_extras=lambda folder: report.write(*_report_paths(folder, "validation")),
        )
    report_json, report_html = _report_paths(out, "validation")
    for stale in _report_paths(out.parent, f"{out.name}.validation"):
        stale.unlink(missing_ok=True)
    return IngestResult(out, summary.split_counts, report_json, report_html,
                        warnings=len(report.warnings))  # fmt: skip


def _report_paths(folder: Path, stem: str) -> tuple[Path, Path]:
    return folder / f"{stem}.json", folder / f"{stem}.html"


def ingest_release(raw_dir: Path, out: Path, cfg: DataConfig) -> IngestResult:
    """:func:`run_ingest` of a release folder (``egd-cxr/`` + ``mimic-cxr/``), as the pipeline's
    ingest step runs it."""
    raw_dir = Path(raw_dir)
    for part in (EGD_DIR, IMAGES_DIR):
        if not (raw_dir / part).is_dir():
            raise FileNotFoundError(
                f"{raw_dir / part}: missing; a release folder holds {EGD_DIR}/ and {IMAGES_DIR}/"
            )
    return run_ingest(raw_dir / EGD_DIR, raw_dir / IMAGES_DIR, out, cfg, progress=False)


def ingest_step(
    raw_dir: str,
    preset: str,
    overrides: list[str],
    store: Path,
    report: Path,
    data_remote: str = "",
) -> tuple[dict[str, int], str]:
    """The ingest pipeline step: the packed store at ``store`` (or, with ``data_remote``, in the
    object store with a pointer at ``store``: :mod:`components.data_transfer`), its validation
    report copied to ``report``; returns the images per split and the md5 of the store."""
    import tempfile

    from components.data_transfer import publish
    from model_lib.data.fingerprint import tree_digest
    from model_lib.presets import get_preset

    cfg = get_preset(preset, overrides).data
    if not data_remote:
        result = ingest_release(Path(raw_dir), Path(store), cfg)
        shutil.copyfile(result.report_html, report)
        return result.split_counts, tree_digest(result.store)
    with tempfile.TemporaryDirectory(prefix="cxr-gaze-store-") as tmp:
        result = ingest_release(Path(raw_dir), Path(tmp) / "store", cfg)
        shutil.copyfile(result.report_html, report)
        pointer = publish(result.store, data_remote, Path(store))
    return result.split_counts, pointer["md5"]


@step_component
def ingest(
    raw_dir: str,
    data_version: str,
    preset: str,
    overrides: list,
    data_remote: str,
    store: Output[Dataset],
    report: Output[HTML],
) -> NamedTuple("IngestOutputs", [("data_md5", str)]):
    """Validate the raw release and pack it. ``data_version`` keys the cache: same content,
    same store."""
    from components.ingest import ingest_step

    counts, md5 = ingest_step(raw_dir, preset, overrides, store.path, report.path, data_remote)
    store.metadata.update({"data_version": data_version, "md5": md5, **counts})
    return (md5,)
