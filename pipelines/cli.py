"""The `cxrgaze` command line.

Commands import their heavy dependencies when they run, so `cxrgaze --help` stays instant.
User errors (bad data, failed validation) print readable lines and exit with status 2, never a
traceback; `--verbose` shows the traceback for debugging.
"""

from __future__ import annotations

import logging
import os
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
_state = {"verbose": False, "quiet": False}


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs and tracebacks.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and errors only; no progress bars.")
    ] = False,
) -> None:
    _state["verbose"], _state["quiet"] = verbose, quiet
    # MLflow draws a bar for every model download; the commands say what they load themselves.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
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
        from components.registry import RegistryUnreachable
        from model_lib.data.errors import DataError

        expected = (DataError, ValidationFailed, FileExistsError, FileNotFoundError, ValueError,
                    RegistryUnreachable)  # fmt: skip
        try:
            return func(*args, **kwargs)
        except expected as err:
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
        progress=not _state["quiet"],
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

    result = run_heatmaps(store, out, load_params(params).data, progress=not _state["quiet"])
    typer.echo(result.describe())


def _print_summary(summary) -> None:
    typer.echo("\n" + summary.text())


def _run_pipeline(raw_dir: Path, **kwargs) -> None:
    from pipelines.local_run import PipelineFailed, run_local

    try:
        summary = run_local(raw_dir, verbose=_state["verbose"], **kwargs)
    except PipelineFailed as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    _print_summary(summary)


Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", help="Preset override dotted.key=value (repeatable).", metavar="KEY=V"),
]
TrackingUri = Annotated[
    str, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow tracking and registry URI.")
]
Policy = Annotated[Path, typer.Option(help="Promotion policy (thresholds) YAML.")]
Retrain = Annotated[
    bool,
    typer.Option(
        help="Train even when a registered version has the same data content, code commit, "
        "preset and overrides (otherwise the run stops early, naming that version)."
    ),
]


def _policy(path: Path) -> dict:
    from components.promote import load_policy

    return load_policy(path).model_dump(mode="json")


@app.command()
@user_errors
def run(
    raw_dir: Annotated[Path, typer.Option(help="Raw release: egd-cxr/ + mimic-cxr/.")],
    preset: Annotated[str, typer.Option(help="paper | paper-exact | demo | ci")] = "demo",
    overrides: Overrides = None,
    data_rev: Annotated[
        str, typer.Option(help="Git revision (tag, sha) of the DVC-tracked --raw-dir to train on.")
    ] = "workspace",
    tracking_uri: TrackingUri = "sqlite:///mlflow.db",
    policy: Policy = Path("mlflow/promotion.yaml"),
    pipeline_root: Annotated[Path, typer.Option(help="Where step outputs go.")] = Path(
        "runs/pipeline"
    ),
    cache: Annotated[
        bool, typer.Option(help="Reuse ingest/heatmaps outputs for unchanged data.")
    ] = False,
    data_remote: Annotated[
        str, typer.Option(help="Object-store prefix (s3://bucket/prefix) for store and maps.")
    ] = "",
    retrain: Retrain = False,
) -> None:
    """Run the training pipeline locally (kfp.local) and print a summary.

    Steps: ingest, gaze maps, every training stage, evaluation, registration, promotion gate.
    With --data-rev, --raw-dir is a DVC-tracked folder read as it was at that git revision
    (copied out through DVC; the workspace is left as it is).

    Example: cxrgaze run --raw-dir runs/demo/raw --preset demo --set stages.s2.max_epochs=4

    Example: cxrgaze run --raw-dir data/raw/synthetic --data-rev data-v1 --preset ci
    """
    from components.pretrained import ensure_pretrained
    from model_lib.presets import get_preset

    # The steps run here: weights that cannot be had stop the run now, not after ingest.
    ensure_pretrained(get_preset(preset, overrides or []).model)
    if data_rev != "workspace":
        from pipelines.data_versions import materialize, repo_root

        root = repo_root()
        copy = materialize(root, raw_dir.resolve(), data_rev, root / "runs" / "data-revs")
        typer.echo(f"{raw_dir} at {data_rev} ({copy.commit[:12]}, md5 {copy.md5}): {copy.path}")
        raw_dir, data_rev = copy.path, copy.label(data_rev)
    _run_pipeline(
        raw_dir,
        preset=preset,
        overrides=overrides or [],
        data_rev=data_rev,
        tracking_uri=tracking_uri,
        policy=_policy(policy),
        pipeline_root=pipeline_root,
        cache=cache,
        data_remote=data_remote,
        retrain=retrain,
    )


@app.command()
@user_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the demo keeps its raw data.")] = Path(
        "runs/demo"
    ),
    params: Annotated[Path, typer.Option(help="params.yaml (its synth section).")] = Path(
        "params.yaml"
    ),
    tracking_uri: TrackingUri = "sqlite:///mlflow.db",
    policy: Policy = Path("mlflow/promotion.yaml"),
    retrain: Retrain = False,
) -> None:
    """Synthesise data if absent, then run the pipeline with the `demo` preset.

    Running it again with the same data and code finds the version it registered and stops;
    with --retrain it trains and registers a new version, which the gate judges against the
    champion.

    Example: cxrgaze demo
    """
    from model_lib.data.synth import generate_dataset
    from model_lib.presets import get_preset

    cfg = load_params(params)
    raw = workdir / "raw"
    scale = get_preset("demo").data.native_scale
    if not (raw / "egd-cxr" / "master_sheet.csv").exists():
        typer.echo(f"synthesising {cfg.synth.n_images} images into {raw}")
        generate_dataset(raw, cfg.synth.n_images, seed=cfg.synth.seed, scale=scale, overwrite=True)
    _run_pipeline(
        raw,
        preset="demo",
        tracking_uri=tracking_uri,
        policy=_policy(policy),
        pipeline_root=workdir / "pipeline",
        retrain=retrain,
    )


@app.command("compile")
@user_errors
def compile_(
    out: Annotated[Path, typer.Option("--out", "-o", help="IR YAML file to write.")] = Path(
        "pipeline.yaml"
    ),
    image: Annotated[str, typer.Option(help="Project image every step runs in.")] = "",
    gpus: Gpus = 1,
    mlflow_secret: Annotated[
        str,
        typer.Option(
            help="Secret in the run's namespace with MLFLOW_TRACKING_URI, "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD."
        ),
    ] = "cxr-gaze-mlflow",
    s3_secret: Annotated[
        str,
        typer.Option(
            help="Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL "
            "(optional: only --data-remote and s3:// weights need it)."
        ),
    ] = "cxr-gaze-s3",
    gpu_step_timeout: Annotated[
        int, typer.Option(help="Deadline of each training pod, in seconds.", min=60)
    ] = 24 * 3600,
) -> None:
    """Compile the training pipeline to KFP IR YAML for a Kubeflow Pipelines cluster.

    Example: cxrgaze compile -o pipeline.yaml --image registry.example.org/cxr-gaze:0.1.0
    """
    from pipelines.compile import CLUSTER_RETRIES, DEFAULT_IMAGE, compile_pipeline
    from pipelines.training_pipeline import ClusterOptions

    options = ClusterOptions(mlflow_secret, s3_secret, gpu_step_timeout)
    path = compile_pipeline(out, image or DEFAULT_IMAGE, gpus, CLUSTER_RETRIES, options)
    typer.echo(f"wrote {path} (image {image or DEFAULT_IMAGE})")


Host = Annotated[
    str,
    typer.Option(
        envvar="KFP_HOST",
        help="Kubeflow Pipelines API URL; the bearer token, if any, comes from KFP_TOKEN.",
    ),
]
ClusterRawDir = Annotated[
    str, typer.Option(help="Raw release (egd-cxr/ + mimic-cxr/) as the pods see it.")
]
Image = Annotated[str, typer.Option(help="Project image every step runs in (when compiling).")]
PipelineFile = Annotated[
    Path | None,
    typer.Option(help="Upload this IR YAML (`cxrgaze compile`) instead of compiling."),
]
ClusterTrackingUri = Annotated[
    str, typer.Option(help="MLflow URI for the steps; empty: the pods' MLFLOW_TRACKING_URI.")
]
ClusterPolicy = Annotated[
    Path | None, typer.Option(help="Promotion policy YAML; default: the one compiled in.")
]
Experiment = Annotated[str, typer.Option(help="KFP experiment (created when absent).")]
KfpNamespace = Annotated[
    str,
    typer.Option(
        "--namespace",
        envvar="KFP_NAMESPACE",
        help="Profile namespace on a multi-user KFP (pipeline, experiment and runs go there); "
        "default: the kfp CLI context's, else this pod's own. Single-user KFP ignores it.",
    ),
]
DataRemote = Annotated[
    str, typer.Option(help="s3://bucket/prefix: store and maps pass between steps by URI.")
]
Gpus = Annotated[int, typer.Option(min=1, help="GPUs per training step (>1: torchrun DDP).")]


def _cluster_arguments(
    raw_dir: str,
    preset: str,
    overrides: list[str] | None,
    data_rev: str,
    tracking_uri: str,
    policy: Path | None,
    data_remote: str,
    retrain: bool = False,
) -> dict:
    """The pipeline's parameters, the preset and overrides checked here rather than in a pod."""
    from components.tracking import refuse_credentials
    from model_lib.presets import get_preset

    get_preset(preset, overrides or [])
    refuse_credentials(tracking_uri, "--tracking-uri")
    arguments = {
        "raw_dir": raw_dir,
        "preset": preset,
        "overrides": list(overrides or []),
        "data_rev": data_rev,
        "tracking_uri": tracking_uri,
        "data_remote": data_remote,
    }
    if policy is not None:
        arguments["promotion_policy"] = _policy(policy)
    if retrain:
        arguments["retrain"] = True
    return arguments


def _on_cluster(call: Callable[[], object]) -> object:
    """Run ``call``; a cluster that cannot be reached or refuses is one line and status 2."""
    from pipelines.cluster import ClusterError

    try:
        return call()
    except ClusterError as err:
        if _state["verbose"]:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


@app.command()
@user_errors
def submit(
    host: Host,
    raw_dir: ClusterRawDir,
    image: Image = "",
    preset: Annotated[str, typer.Option(help="paper | paper-exact | demo | ci")] = "demo",
    overrides: Overrides = None,
    data_rev: Annotated[str, typer.Option(help="Data revision label (DVC/git rev).")] = "workspace",
    tracking_uri: ClusterTrackingUri = "",
    policy: ClusterPolicy = None,
    experiment: Experiment = "cxr-gaze",
    run_name: Annotated[str, typer.Option(help="Run display name; default: name + time.")] = "",
    pipeline_file: PipelineFile = None,
    data_remote: DataRemote = "",
    gpus: Gpus = 1,
    retrain: Retrain = False,
    namespace: KfpNamespace = "",
) -> None:
    """Upload the training pipeline to Kubeflow Pipelines and start one run.

    The first upload creates the pipeline; later ones add a version named by time and content.
    Needs a KFP backend 2.14 or later. The token: KFP_TOKEN, else the projected service-account
    token at KF_PIPELINES_SA_TOKEN_PATH (in a pod).

    Example: KFP_TOKEN=... cxrgaze submit --host https://kubeflow.example.org/pipeline
    --raw-dir /data/egd-cxr-release --image registry.example.org/cxr-gaze:0.1.0 --preset paper
    """
    from pipelines.cluster import submit as submit_run

    arguments = _cluster_arguments(
        raw_dir, preset, overrides, data_rev, tracking_uri, policy, data_remote, retrain
    )
    result = _on_cluster(
        lambda: submit_run(
            host,
            arguments=arguments,
            image=image or None,
            experiment=experiment,
            run_name=run_name or None,
            pipeline_file=pipeline_file,
            gpus=gpus,
            namespace=namespace or None,
        )
    )
    typer.echo(result.describe())


@app.command()
@user_errors
def schedule(
    host: Host,
    raw_dir: ClusterRawDir,
    cron: Annotated[
        str, typer.Option(help="6 fields, seconds first: '0 0 3 * * 1' is Mondays 03:00.")
    ],
    name: Annotated[str, typer.Option(help="Recurring run name; reusing it replaces it.")],
    image: Image = "",
    preset: Annotated[str, typer.Option(help="paper | paper-exact | demo | ci")] = "demo",
    overrides: Overrides = None,
    data_rev: Annotated[str, typer.Option(help="Data revision label (DVC/git rev).")] = "workspace",
    tracking_uri: ClusterTrackingUri = "",
    policy: ClusterPolicy = None,
    experiment: Experiment = "cxr-gaze",
    pipeline_file: PipelineFile = None,
    data_remote: DataRemote = "",
    gpus: Gpus = 1,
    retrain: Retrain = False,
    namespace: KfpNamespace = "",
) -> None:
    """Schedule the training pipeline on Kubeflow Pipelines (a recurring run).

    One run at a time, no back-fill of missed slots. Scheduling an existing name replaces it:
    the new recurring run is created first, then the old one deleted. Backend, token and
    namespace as for `cxrgaze submit`.

    Example: KFP_TOKEN=... cxrgaze schedule --host https://kubeflow.example.org/pipeline
    --raw-dir /data/egd-cxr-release --cron '0 0 3 * * 1' --name weekly-retrain --preset paper
    """
    from pipelines.cluster import schedule as schedule_run
    from pipelines.cluster import validate_cron

    validate_cron(cron)  # a typo fails before the preset is even looked at
    arguments = _cluster_arguments(
        raw_dir, preset, overrides, data_rev, tracking_uri, policy, data_remote, retrain
    )
    result = _on_cluster(
        lambda: schedule_run(
            host,
            cron=cron,
            name=name,
            arguments=arguments,
            image=image or None,
            experiment=experiment,
            pipeline_file=pipeline_file,
            gpus=gpus,
            namespace=namespace or None,
        )
    )
    typer.echo(result.describe())


model_app = typer.Typer(
    help="The registered model: rollback.\n\nExample: cxrgaze model rollback",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


@model_app.command("rollback")
@user_errors
def model_rollback(tracking_uri: TrackingUri = "sqlite:///mlflow.db") -> None:
    """Point `champion` back at `previous_champion` (no retraining; safe to repeat).

    Example: cxrgaze model rollback --tracking-uri http://mlflow.example.org
    """
    from components.model_ops import NothingToRollBack, rollback_champion

    try:
        typer.echo(rollback_champion(tracking_uri).describe())
    except NothingToRollBack as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)


@app.command()
@user_errors
def lineage(
    version: Annotated[str, typer.Argument(help="Version number or alias (champion, ...).")],
    tracking_uri: TrackingUri = "sqlite:///mlflow.db",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where a registered version came from: data, code, preset, metrics, gate, run.

    Example: cxrgaze lineage champion
    """
    import json

    from components.model_ops import lineage_text, version_lineage

    try:
        info = version_lineage(tracking_uri, version)
    except LookupError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    typer.echo(json.dumps(info, indent=2) if as_json else lineage_text(info))


data_app = typer.Typer(
    help="Versions of data/raw (git + DVC): list, roll back, push.\n\n"
    "Example: cxrgaze data versions",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("versions")
@user_errors
def data_versions(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every version of every data/raw folder in the git history: commit, tags, md5, images.

    Example: cxrgaze data versions
    """
    import json

    from pipelines.data_versions import list_versions, repo_root, versions_text

    versions = list_versions(repo_root())
    if as_json:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
    else:
        typer.echo(versions_text(versions))


Remote = Annotated[
    str | None, typer.Option(help="DVC remote name (default: the project's default remote).")
]
Attempts = Annotated[int, typer.Option(min=1, help="Whole-transfer attempts, with backoff.")]


def _sync(call: Callable[[], object]) -> None:
    from pipelines.data_sync import DataSyncError

    try:
        result = call()
    except DataSyncError as err:
        if _state["verbose"]:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    typer.echo(result.describe())  # type: ignore[attr-defined]


@data_app.command("push")
@user_errors
def data_push(remote: Remote = None, attempts: Attempts = 5) -> None:
    """Upload the DVC-tracked data to a remote, retrying through outages, then check every
    object on the remote against its md5.

    Example: cxrgaze data push --remote s3
    """
    from pipelines.data_sync import push
    from pipelines.data_versions import repo_root

    _sync(lambda: push(repo_root(), remote, attempts=attempts))


@data_app.command("pull")
@user_errors
def data_pull(remote: Remote = None, attempts: Attempts = 5) -> None:
    """Download the data this commit tracks, check each object's md5, then check it out.

    Example: cxrgaze data pull --remote s3
    """
    from pipelines.data_sync import pull
    from pipelines.data_versions import repo_root

    _sync(lambda: pull(repo_root(), remote, attempts=attempts))


@data_app.command("rollback")
@user_errors
def data_rollback(
    rev: Annotated[str, typer.Argument(help="Git tag, branch or commit whose data to restore.")],
    remote: Annotated[
        str | None, typer.Option(help="DVC remote to fetch from when the cache lacks the data.")
    ] = None,
) -> None:
    """Restore data/raw (and its derived outputs) to REV with git + DVC, and commit the change.

    Code and params.yaml are left as they are; history only grows (a new commit).

    Example: cxrgaze data rollback data-v1
    """
    from pipelines.data_versions import repo_root, rollback

    typer.echo(rollback(repo_root(), rev, remote=remote).describe())


ModelUri = Annotated[
    str, typer.Option("--model", help="Registered model: models:/<name>@<alias> or /<version>.")
]


@app.command()
@user_errors
def predict(
    paths: Annotated[
        list[Path], typer.Argument(help="DICOM (.dcm/.dicom), PNG or JPEG files, or folders.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for <name>.json + <name>_overlay.png.")] = Path(
        "predictions"
    ),
    model: ModelUri = "models:/cxr-gaze@champion",
    tracking_uri: TrackingUri = "sqlite:///mlflow.db",
) -> None:
    """Class probabilities and a saliency overlay for each image, from a registered model.

    Folders are searched recursively; other files there are skipped and counted. Images that
    share a name get <parent>__<name> outputs. A file that fails is reported and the others are
    still written; the exit status is then 2.

    Example: cxrgaze predict scans/ --out predictions

    Example: cxrgaze predict a.dcm b.png --model models:/cxr-gaze/3 --tracking-uri http://mlflow:5000
    """
    from components.predict import run_predict

    try:
        summary = run_predict(paths, out, model_uri=model, tracking_uri=tracking_uri)
    except LookupError as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    typer.echo(summary.describe())
    for path, reason in summary.failed:
        typer.secho(f"error: {path}: {reason}", fg=typer.colors.RED, err=True)
    if summary.failed:
        sys.exit(2)


@app.command()
@user_errors
def serve(
    model: ModelUri = "models:/cxr-gaze@champion",
    tracking_uri: TrackingUri = "sqlite:///mlflow.db",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port; 0 picks a free one.")] = 8000,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest accepted request body, in MiB.")
    ] = 64.0,
) -> None:
    """Serve a registered model over HTTP: GET /health, POST /predict (an image file).

    POST the file as the body (Content-Type application/dicom, image/png, image/jpeg) or as the
    form field `file`; the answer holds the class probabilities and the saliency map
    (?overlay=true adds an overlay PNG). Prints the URL once it listens; stops on Ctrl-C.

    Example: cxrgaze serve --port 8000

    Example: curl -H 'Content-Type: application/dicom' --data-binary @scan.dcm
    http://127.0.0.1:8000/predict
    """
    from components.serve import serve as serve_model

    try:
        serve_model(
            model,
            tracking_uri=tracking_uri,
            host=host,
            port=port,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            on_ready=lambda url: typer.echo(f"serving {model} at {url}"),
        )
    except (LookupError, OSError) as err:
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
