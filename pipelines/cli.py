"""The `cxrgaze` command line.

Commands import their heavy dependencies when they run, so `cxrgaze --help` stays instant.
User errors (bad data, failed validation) print readable lines and exit with status 2, never a
traceback; `--verbose` shows the traceback for debugging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from model_lib.config import load_params

app = typer.Typer(
    name="cxrgaze",
    help="Chest X-ray diagnosis + radiologist gaze: data, training pipeline and registry.\n\n"
    "Example: cxrgaze synth --out data/raw/synthetic --n-images 60 --scale 0.25",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., None])
_state = {"verbose": False}


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Warnings and errors only.")] = False,
) -> None:
    _state["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if not verbose:
        # Third-party libraries narrate their internals at INFO; keep our own story readable.
        for noisy in ("great_expectations", "dvc", "mlflow", "kfp", "urllib3", "botocore"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def user_errors(func: F) -> F:
    """Turn the project's input errors into a one-paragraph message and exit status 2."""

    @wraps(func)
    def wrapper(*args, **kwargs):
        from components.ingest_checks import ValidationFailed
        from model_lib.data.errors import DataError

        try:
            return func(*args, **kwargs)
        except (DataError, ValidationFailed, FileExistsError, FileNotFoundError) as err:
            if _state["verbose"]:
                raise
            typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option(help="Output folder (gets egd-cxr/ and mimic-cxr/).")],
    n_images: Annotated[int, typer.Option(min=3, help="Number of images.")] = 60,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same bytes.")] = 0,
    scale: Annotated[
        float, typer.Option(min=0.02, max=1.0, help="Image size relative to real MIMIC-CXR.")
    ] = 1.0,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Write a synthetic EGD-CXR release plus MIMIC-CXR DICOMs in the real layout.

    Example: cxrgaze synth --out data/raw/synthetic --n-images 300 --seed 0 --scale 0.25
    """
    from model_lib.data.synth import generate_dataset

    summary = generate_dataset(out, n_images=n_images, seed=seed, scale=scale, overwrite=overwrite)
    typer.echo(
        f"wrote {summary.n_images} images to {out} in {summary.seconds:.1f} s "
        f"(EGD tables: {summary.egd_root}, DICOMs: {summary.images_root})"
    )


@app.command()
@user_errors
def ingest(
    egd_root: Annotated[Path, typer.Option(help="EGD-CXR release folder (master_sheet.csv, ...).")],
    images_root: Annotated[Path, typer.Option(help="MIMIC-CXR (DICOM) or MIMIC-CXR-JPG root.")],
    out: Annotated[Path, typer.Option(help="Packed store to write (replaced only on success).")],
    params: Annotated[Path, typer.Option(help="params.yaml with a `data` section.")] = Path(
        "params.yaml"
    ),
    workers: Annotated[int, typer.Option(min=1, help="Decoding processes.")] = 2,
    expected_images: Annotated[
        int | None, typer.Option(help="Fail unless the master sheet has this many rows.")
    ] = None,
) -> None:
    """Validate an EGD-CXR release and pack it into the training store.

    Example: cxrgaze ingest --egd-root data/raw/synthetic/egd-cxr
    --images-root data/raw/synthetic/mimic-cxr --out data/processed/store
    """
    from components.ingest import run_ingest

    result = run_ingest(
        egd_root,
        images_root,
        out,
        load_params(params).data,
        workers=workers,
        expected_images=expected_images,
    )
    typer.echo(result.describe())


@app.command()
@user_errors
def heatmaps(
    store: Annotated[Path, typer.Option(help="Packed store written by `cxrgaze ingest`.")],
    out: Annotated[Path, typer.Option(help="Folder for the gaze maps (replaced on success).")],
    params: Annotated[Path, typer.Option(help="params.yaml with a `data` section.")] = Path(
        "params.yaml"
    ),
) -> None:
    """Turn the stored gaze events into ground-truth maps at the target resolution.

    Example: cxrgaze heatmaps --store data/processed/store --out data/processed/heatmaps
    """
    from components.heatmaps import run_heatmaps

    result = run_heatmaps(store, out, load_params(params).data)
    typer.echo(result.describe())


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo writes its data.")] = Path(
        "runs/demo"
    ),
    params: Annotated[Path, typer.Option(help="params.yaml (synth and data sections).")] = Path(
        "params.yaml"
    ),
) -> None:
    """Synthesise data if absent, then ingest and compute the gaze maps.

    Example: cxrgaze demo --workdir runs/demo
    """
    from components.heatmaps import run_heatmaps
    from components.ingest import run_ingest
    from model_lib.data.synth import generate_dataset

    cfg = load_params(params)
    raw = workdir / "raw"
    if not (raw / "egd-cxr" / "master_sheet.csv").exists():
        typer.echo(f"synthesising {cfg.synth.n_images} images into {raw}")
        generate_dataset(raw, cfg.synth.n_images, seed=cfg.synth.seed, scale=cfg.synth.scale,
                         overwrite=True)  # fmt: skip
    ingested = run_ingest(raw / "egd-cxr", raw / "mimic-cxr", workdir / "store", cfg.data)
    maps = run_heatmaps(ingested.store, workdir / "heatmaps", cfg.data)
    typer.echo(
        "\n".join(["", "demo finished:", f"  {ingested.describe()}", f"  {maps.describe()}"])
    )
