"""Run the training pipeline on this machine with kfp.local, then summarise what it produced.

Each step runs as a subprocess of the current Python (``SubprocessRunner(use_venv=False)``): the
environment that has the project installed is the one the steps use, as the project image is on
a cluster. Outputs land under ``<pipeline_root>/<run name>/<task>/``; tracking goes to the
given MLflow URI (default ``sqlite:///mlflow.db`` with artifacts in ``mlruns/`` beside it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.kfp_step import PROGRESS_ENV

logger = logging.getLogger(__name__)

DEFAULT_PIPELINE_ROOT = Path("runs/pipeline")


class PipelineFailed(RuntimeError):
    """A step failed; the message names the run, and the summary says what was left."""


def absolute_tracking_uri(tracking_uri: str) -> str:
    """A sqlite URI with an absolute path (steps may run elsewhere); others unchanged."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and not tracking_uri.startswith(prefix + "/"):
        return prefix + str(Path(tracking_uri.removeprefix(prefix)).resolve())
    return tracking_uri


@dataclass
class RunSummary:
    """What a pipeline run left behind, read back from its outputs and from MLflow.

    ``pipeline_run_name`` is the run's display name (kfp.local's folder); ``pipeline_run_id`` its
    job uuid, which MLflow and the registry know it by (None when it never opened a run)."""

    pipeline_run_name: str
    succeeded: bool
    seconds: float
    output_dir: Path
    tracking_uri: str
    mlflow_run_id: str | None = None
    mlflow_status: str | None = None
    test: dict[str, float] = field(default_factory=dict)
    version: str | None = None
    validation_status: str | None = None
    reasons: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    log: Path | None = None
    trained_as: tuple[str, str] | None = None
    pipeline_run_id: str | None = None
    split: str = "test"
    """The split ``test`` holds the metrics of (``val`` under the authors' evaluation choice)."""

    def text(self) -> str:
        state = "SUCCEEDED" if self.succeeded else "FAILED"
        lines = [f"pipeline run {self.pipeline_run_name}: {state} in {self.seconds:.0f} s"]
        if self.test:
            t = self.test
            lines.append(
                f"  {self.split} split: macro AUC {t['auc_macro']:.3f}, "
                f"accuracy {t['accuracy']:.3f}, "
                f"mean CC {t['cc_mean']:.3f} (center prior {t['center_prior_cc_mean']:.3f})"
            )
        if self.trained_as is not None:
            version, by_run = self.trained_as
            lines.append(
                f"  already trained: cxr-gaze version {version} (pipeline run {by_run}) has the "
                "same data, code, preset and overrides; nothing to train (--retrain to train "
                "anyway)"
            )
        if self.version is not None:
            status = self.validation_status or "not judged"
            lines.append(f"  registered cxr-gaze version {self.version}: {status}")
            lines += [f"    {reason}" for reason in self.reasons]
        if self.aliases:
            aliases = ", ".join(f"{a} -> v{v}" for a, v in sorted(self.aliases.items()))
            lines.append(f"  aliases: {aliases}")
        if self.report is not None:
            lines.append(f"  report: {self.report}")
        lines.append(f"  outputs: {self.output_dir}")
        if self.log is not None:
            lines.append(f"  step logs: {self.log}")
        if self.mlflow_run_id:
            lines.append(f"  MLflow run {self.mlflow_run_id} ({self.mlflow_status})")
        ui = (
            f"mlflow ui --backend-store-uri {self.tracking_uri}"
            if self.tracking_uri.startswith("sqlite:")
            else self.tracking_uri
        )
        lines.append(f"  MLflow UI: {ui}  (then open http://127.0.0.1:5000)")
        return "\n".join(lines)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([^']+)'")
_FINISHED = re.compile(r"Task '([^']+)' finished with status (\w+)")
_EPOCH = re.compile(r"^progress: stage (\S+) epoch (\d+/\S+): (.*)$")


class _Progress(threading.Thread):
    """Follows kfp.local's log file and prints one line per step as it starts and ends, and the
    epoch lines training steps append to ``progress_path`` (kfp.local writes a step's output to
    its log only when the step ends, so epochs need a file of their own to show live)."""

    def __init__(self, log_path: Path, out: Any, progress_path: Path | None = None) -> None:
        super().__init__(daemon=True)
        self.log_path, self.out = log_path, out
        self.progress_path = progress_path
        self.done = threading.Event()
        self.started: dict[str, float] = {}
        self.t0 = time.perf_counter()

    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        now = time.perf_counter()
        if match := _STARTED.search(line):
            self.started[match[1]] = now
            print(f"  [{now - self.t0:5.0f} s] {match[1]} ...", file=self.out, flush=True)
        elif match := _EPOCH.search(line):
            print(f"  [{now - self.t0:5.0f} s]   {match[1]} epoch {match[2]}: {match[3]}",
                  file=self.out, flush=True)  # fmt: skip
        elif match := _FINISHED.search(line):
            took = now - self.started.get(match[1], now)
            print(f"  [{now - self.t0:5.0f} s] {match[1]}: {match[2].lower()} ({took:.0f} s)",
                  file=self.out, flush=True)  # fmt: skip

    def run(self) -> None:
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(p.open(encoding="utf-8", errors="replace"))
                     for p in (self.log_path, self.progress_path) if p is not None]  # fmt: skip
            while True:
                lines = [line for f in files if (line := f.readline())]
                for line in lines:
                    self._line(line)
                if not lines:
                    if self.done.is_set():
                        return
                    time.sleep(0.2)


@contextlib.contextmanager
def _quiet_steps(log_path: Path, verbose: bool) -> Iterator[None]:
    """Send kfp.local's output (every step's full log) to ``log_path``; show one progress line
    per step instead, unless ``verbose``."""
    if verbose:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    epochs = log_path.with_suffix(".progress")
    epochs.write_text("", encoding="utf-8")
    os.environ[PROGRESS_ENV] = str(epochs)  # the steps inherit it and append their epochs
    with log_path.open("w", encoding="utf-8") as sink:
        progress = _Progress(log_path, sys.stdout, epochs)
        progress.start()
        root = logging.getLogger()
        level = root.level
        # kfp.local also reports through the root logger's existing handlers ("Skipping
        # conditional task", "Cleaned up workspace"); the log file has those lines already.
        root.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
        finally:
            root.setLevel(level)
            sink.flush()
            progress.done.set()
            progress.join()
            os.environ.pop(PROGRESS_ENV, None)
            epochs.unlink(missing_ok=True)


def _new_run_dir(root: Path, before: set[str], pipeline_name: str) -> Path | None:
    fresh = [p for p in root.iterdir() if p.name not in before and p.name.startswith(pipeline_name)]
    return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


def summarise(
    pipeline_run_name: str, output_dir: Path, tracking_uri: str, succeeded: bool, seconds: float
) -> RunSummary:
    """Read the run's evaluation and registry state back from its outputs and MLflow."""
    from components.promote import REASONS_TAG
    from components.registry import (
        MODEL_NAME,
        VALIDATION_STATUS_TAG,
        registered_by,
        registry_client,
    )
    from components.tracking import TRAINED_AS_TAG, find_pipeline_run_named

    summary = RunSummary(pipeline_run_name, succeeded, seconds, output_dir, tracking_uri)
    client = registry_client(tracking_uri)
    # kfp.local names the run's folder with its display name; the run's uuid is on the tags.
    found = find_pipeline_run_named(tracking_uri, pipeline_run_name)
    summary.mlflow_run_id, summary.pipeline_run_id = found if found else (None, None)
    if summary.mlflow_run_id:
        run = client.get_run(summary.mlflow_run_id)
        summary.mlflow_status = run.info.status
        if found := run.data.tags.get(TRAINED_AS_TAG):
            summary.trained_as = tuple(found.split(" ", 1))  # type: ignore[assignment]
    evaluation = output_dir / "evaluate" / "summary"
    if evaluation.is_file():
        raw = json.loads(evaluation.read_text(encoding="utf-8"))
        summary.split = raw.get("split", "test")
        summary.test = {
            "auc_macro": raw["classification"]["auc_macro"],
            "accuracy": raw["classification"]["accuracy"],
            "cc_mean": raw["saliency"]["cc"]["mean"],
            "center_prior_cc_mean": raw["center_prior"]["cc"]["mean"],
        }
    if (output_dir / "evaluate" / "report").is_file():
        # KFP names the HTML artifact without a suffix; browsers want one to render it.
        summary.report = output_dir / "report.html"
        shutil.copyfile(output_dir / "evaluate" / "report", summary.report)
    run_id = summary.pipeline_run_id
    version = None if run_id is None else registered_by(client, MODEL_NAME, run_id)
    if version is not None:
        summary.version = str(version.version)
        summary.validation_status = version.tags.get(VALIDATION_STATUS_TAG)
        summary.reasons = version.tags.get(REASONS_TAG, "").splitlines()
        model = client.get_registered_model(MODEL_NAME)
        summary.aliases = {alias: str(v) for alias, v in model.aliases.items()}
    return summary


def run_local(
    raw_dir: Path,
    *,
    preset: str = "demo",
    overrides: Sequence[str] = (),
    data_rev: str = "workspace",
    tracking_uri: str = "sqlite:///mlflow.db",
    policy: Mapping[str, Any] | None = None,
    pipeline_root: Path = DEFAULT_PIPELINE_ROOT,
    cache: bool = False,
    verbose: bool = False,
    data_remote: str = "",
    retrain: bool = False,
) -> RunSummary:
    """Run :func:`~pipelines.training_pipeline.training_pipeline` with kfp.local.

    Args:
        raw_dir: the raw release (``egd-cxr/`` + ``mimic-cxr/``).
        policy: promotion thresholds (default: the checkout's ``mlflow/promotion.yaml``).
        cache: reuse ingest and heatmaps outputs of earlier runs on the same data content.
        retrain: train even when a registered version has the same data content, clean code
            commit, preset and overrides (otherwise the run stops after opening its MLflow run).
        data_remote: an object-store prefix (``s3://bucket/prefix``) for the store and maps;
            the artifacts then hold pointers (:mod:`components.data_transfer`).
        verbose: print every step's log; otherwise one line per step, and the logs go to
            ``<pipeline_root>/<run name>.log``.

    Raises:
        FileNotFoundError: no raw release at ``raw_dir``.
        PipelineFailed: a step failed (its MLflow run is marked FAILED by the exit handler).
    """
    from kfp import local

    from components.registry import check_reachable
    from components.tracking import refuse_credentials
    from model_lib.presets import get_preset
    from pipelines.training_pipeline import PIPELINE_NAME, default_policy, training_pipeline

    raw_dir = Path(raw_dir).resolve()
    # Steps inherit the environment; unbuffered, their epoch lines reach the log as they happen.
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"{raw_dir}: no raw release there (run `cxrgaze synth` first)")
    get_preset(preset, overrides)  # a bad preset or override fails here, not in a step
    refuse_credentials(tracking_uri, "tracking URI")
    tracking_uri = absolute_tracking_uri(tracking_uri)
    check_reachable(tracking_uri)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    local.init(
        local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
        cache_root=str(root / ".cache"),
        raise_on_error=True,
    )
    before = {p.name for p in root.iterdir()}
    start = time.perf_counter()
    error: Exception | None = None
    log_path = root / f".{PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        with _quiet_steps(log_path, verbose), warnings.catch_warnings():
            # GPU, CPU, memory and Kubernetes settings are for the cluster; kfp.local warns
            # that it ignores them, once per training step.
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
            # The steps' image is this environment (use_venv=False), which kfp cannot know.
            warnings.filterwarnings("ignore", message=".*custom or non-Python base image")
            training_pipeline(
                raw_dir=str(raw_dir),
                data_rev=data_rev,
                preset=preset,
                overrides=list(overrides),
                promotion_policy=dict(policy) if policy is not None else default_policy(),
                tracking_uri=tracking_uri,
                data_remote=data_remote,
                retrain=retrain,
            )
    except RuntimeError as err:
        error = err
    seconds = time.perf_counter() - start
    run_dir = _new_run_dir(root, before, PIPELINE_NAME)
    if run_dir is None:
        raise PipelineFailed(f"the pipeline did not start: {error}") from error
    if log_path.is_file():
        log_path = log_path.rename(root / f"{run_dir.name}.log")
    summary = summarise(run_dir.name, run_dir, tracking_uri, error is None, seconds)
    summary.log = log_path if log_path.is_file() else None
    if error is not None:
        raise PipelineFailed(f"{error}\n{summary.text()}") from error
    return summary
