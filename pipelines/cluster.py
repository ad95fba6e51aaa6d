"""Submit and schedule the training pipeline on a Kubeflow Pipelines cluster (``kfp.Client``).

Every call uploads the IR it runs: the first as the pipeline ``cxr-gaze-training``, later ones as
new versions of it named by time and content digest. The cluster so keeps the history of what
ran, and each run or schedule points at one exact version, never at "the latest".

Before any upload the backend is asked for its health (``/apis/v2beta1/healthz``): a backend
older than 2.14 is refused (the pipeline's exit handler takes a ``PipelineTaskFinalStatus``), and
a multi-user one (Kubeflow profiles) gets the pipeline, experiment, runs and recurring runs in
a profile namespace, which must then be known.

The bearer token comes from the environment only, never from an argument, a log line or an
error message: ``KFP_TOKEN``, else the projected service-account token that kfp's
``ServiceAccountTokenVolumeCredentials`` reads (``$KF_PIPELINES_SA_TOKEN_PATH``, default
``/var/run/secrets/kubeflow/pipelines/token``; audience ``pipelines.kubeflow.org``), re-read
before every request as the kubelet rotates it, else none.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import kfp
import kfp.client
import yaml

from pipelines.training_pipeline import PIPELINE_NAME

log = logging.getLogger(__name__)

TOKEN_ENV = "KFP_TOKEN"
SA_TOKEN_ENV = kfp.client.KF_PIPELINES_SA_TOKEN_ENV
SA_TOKEN_PATH = kfp.client.KF_PIPELINES_SA_TOKEN_PATH
MIN_BACKEND = (2, 14)
"""The oldest Kubeflow Pipelines backend that accepts the pipeline's exit handler, whose task
takes a ``PipelineTaskFinalStatus``."""
DEFAULT_EXPERIMENT = "cxr-gaze"
CRON_FIELDS = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,#L-]+$")
_RELEASE = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+.][0-9A-Za-z.+-]*)?$")
T = TypeVar("T")


class ClusterError(Exception):
    """Talking to Kubeflow Pipelines failed; the message names the host and what was asked."""


class ClusterUnreachable(ClusterError, ConnectionError):
    """Nothing answers at the host (refused, unknown name, TLS failure)."""


class ClusterRequestFailed(ClusterError):
    """The host answered with an HTTP error (bad token, missing permission, rejected input)."""


class UnsupportedBackend(ClusterError):
    """The backend is too old for this pipeline (before 2.14), or not a KFP v2 API at all."""


class NamespaceRequired(ClusterError):
    """A multi-user backend, and no profile namespace was given or found."""


@dataclass(frozen=True)
class Backend:
    """What the backend says of itself: ``version`` is its ``tag_name`` as reported."""

    multi_user: bool
    version: str | None


@dataclass(frozen=True)
class PipelineVersion:
    """The uploaded pipeline version a run or schedule points at."""

    pipeline_id: str
    version_id: str
    version_name: str
    new_pipeline: bool


@dataclass(frozen=True)
class Submitted:
    """One run started from an uploaded version; ``url`` opens it in the KFP UI."""

    host: str
    version: PipelineVersion
    experiment_id: str
    run_id: str
    run_name: str
    namespace: str | None = None

    @property
    def url(self) -> str:
        return f"{self.host}/#/runs/details/{self.run_id}"

    def describe(self) -> str:
        return "\n".join(
            [
                _describe_version(self.host, self.version),
                _describe_experiment(self.experiment_id, self.namespace),
                f"run {self.run_name!r} {self.run_id}: {self.url}",
            ]
        )


@dataclass(frozen=True)
class Scheduled:
    """A recurring run on an uploaded version; ``replaced`` lists the ones it deleted."""

    host: str
    version: PipelineVersion
    experiment_id: str
    recurring_run_id: str
    name: str
    cron: str
    replaced: tuple[str, ...]
    namespace: str | None = None

    @property
    def url(self) -> str:
        return f"{self.host}/#/recurringrun/details/{self.recurring_run_id}"

    def describe(self) -> str:
        lines = [
            _describe_version(self.host, self.version),
            _describe_experiment(self.experiment_id, self.namespace),
        ]
        if self.replaced:
            lines.append(f"deleted the previous recurring run(s) {', '.join(self.replaced)}")
        lines.append(
            f"recurring run {self.name!r} {self.recurring_run_id} on cron {self.cron!r}: {self.url}"
        )
        return "\n".join(lines)


def _describe_version(host: str, version: PipelineVersion) -> str:
    what = "new pipeline" if version.new_pipeline else "new version"
    url = f"{host}/#/pipelines/details/{version.pipeline_id}/version/{version.version_id}"
    return f"{what} {PIPELINE_NAME} / {version.version_name} {version.version_id}: {url}"


def _describe_experiment(experiment_id: str, namespace: str | None) -> str:
    return f"experiment {experiment_id}" + (f" in namespace {namespace}" if namespace else "")


def validate_cron(cron: str) -> str:
    """``cron`` stripped, if it is the 6-field form KFP's scheduler (robfig/cron) reads.

    Raises:
        ValueError: not 6 fields, or a field with characters cron does not use.
    """
    fields = cron.split()
    if len(fields) != len(CRON_FIELDS):
        raise ValueError(
            f"cron {cron!r} has {len(fields)} field(s); Kubeflow Pipelines wants "
            f"{len(CRON_FIELDS)} ({' '.join(CRON_FIELDS)}), e.g. '0 0 3 * * 1' for "
            "Mondays at 03:00"
        )
    for field, value in zip(CRON_FIELDS, fields, strict=True):
        if not _CRON_FIELD.match(value):
            raise ValueError(f"cron {cron!r}: the {field} field {value!r} is not cron syntax")
    return " ".join(fields)


def validate_host(host: str) -> str:
    """``host`` without a trailing slash, if it is an http(s) URL.

    Raises:
        ValueError: no http:// or https:// scheme (kfp would silently assume https).
    """
    if not re.match(r"^https?://[^/\s]+", host):
        raise ValueError(f"host {host!r} is not an http:// or https:// URL")
    return host.rstrip("/")


def default_namespace() -> str | None:
    """The profile namespace ``kfp.Client`` itself would pick when given none.

    The ``namespace`` of the kfp CLI's context (``~/.config/kfp/context.json``, written by
    ``kfp`` / ``Client.set_user_namespace``), else the namespace of the pod this runs in (its
    service-account namespace file), else None.
    """
    context = Path(kfp.Client._LOCAL_KFP_CONTEXT)
    if context.is_file():
        try:
            found = json.loads(context.read_text(encoding="utf-8")).get("namespace")
        except (OSError, ValueError, AttributeError) as err:
            log.warning("ignoring the kfp context %s: %s", context, err)
            found = None
        if isinstance(found, str) and found.strip():
            return found.strip()
    pod = Path(kfp.Client._NAMESPACE_PATH)
    with contextlib.suppress(OSError):
        return pod.read_text(encoding="utf-8").strip() or None
    return None


def backend_version(tag: object) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a release tag (``2.14.0``, ``v2.15.1``, ``2.16.0-rc.1``);
    None for anything else (``unknown``, ``master``, a commit)."""
    match = _RELEASE.match(tag.strip()) if isinstance(tag, str) else None
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def submit(
    host: str,
    *,
    arguments: dict[str, Any],
    image: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    pipeline_file: Path | None = None,
    gpus: int = 1,
    namespace: str | None = None,
) -> Submitted:
    """Upload the pipeline (compiled for ``image``, or ``pipeline_file``) and start one run.

    Args:
        host: Kubeflow Pipelines API endpoint, e.g. ``https://kubeflow.example.org/pipeline``.
        arguments: pipeline parameters (``raw_dir``, ``preset``, ``overrides``, ...).
        image: project image every step runs in (default :data:`pipelines.compile.DEFAULT_IMAGE`).
        experiment: KFP experiment, created when absent.
        run_name: display name of the run (default: pipeline name and UTC time).
        pipeline_file: an IR YAML from ``cxrgaze compile``, uploaded instead of compiling.
        gpus: GPUs per training step, compiled into the pipeline (ignored with a file).
        namespace: profile namespace of a multi-user backend (default:
            :func:`default_namespace`); a single-user backend ignores it.

    Raises:
        ValueError: bad host, or a pipeline file that is not this pipeline's IR.
        FileNotFoundError: ``pipeline_file`` does not exist.
        ClusterUnreachable: nothing answers at ``host``.
        ClusterRequestFailed: the cluster refused a request.
        UnsupportedBackend: a backend older than 2.14 (before any upload).
        NamespaceRequired: a multi-user backend and no namespace (before any upload).
    """
    host = validate_host(host)
    _check_package(pipeline_file, image)
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        package = _package(pipeline_file, image, gpus, Path(tmp))  # bad image: before a request
        client, namespace = _connect(host, namespace)
        version = _upload(client, host, package, namespace)
        experiment_id = _experiment(client, host, experiment, namespace)
        run_name = run_name or f"{PIPELINE_NAME}-{_stamp()}"
        # The run belongs to its experiment's namespace; v2beta1 runs carry no namespace.
        run = _ask(
            host,
            f"create run {run_name!r}",
            client.run_pipeline,
            experiment_id,
            run_name,
            params=arguments,
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
        )
    log.info("started run %s (%s) of version %s", run_name, run.run_id, version.version_name)
    return Submitted(host, version, experiment_id, run.run_id, run_name, namespace)


def schedule(
    host: str,
    *,
    cron: str,
    name: str,
    arguments: dict[str, Any],
    image: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    pipeline_file: Path | None = None,
    gpus: int = 1,
    namespace: str | None = None,
) -> Scheduled:
    """Upload the pipeline and (re)create the recurring run ``name`` on ``cron``.

    KFP cannot update a recurring run in place. The new one is created first and only then are
    those with the same display name in the experiment deleted, so a failure in between leaves
    the old schedule running, never nothing. At most one run is active at a time
    (``max_concurrency=1``) and missed slots are not back-filled (``no_catchup``): one
    retraining after a pause, not a burst.

    Args:
        cron: 6 fields with seconds first, e.g. ``0 0 3 * * 1`` (Mondays 03:00).
        name: display name of the recurring run; scheduling it again replaces it.
        Others as in :func:`submit`.

    Raises:
        ValueError: bad cron, name or host (before any request), or a bad pipeline file.
        FileNotFoundError, ClusterUnreachable, ClusterRequestFailed, UnsupportedBackend,
        NamespaceRequired: as in :func:`submit`. A failed deletion after the new recurring
        run exists says so, naming both.
    """
    cron = validate_cron(cron)
    if not name.strip():
        raise ValueError("the recurring run needs a non-empty name")
    host = validate_host(host)
    _check_package(pipeline_file, image)
    with _quiet(), tempfile.TemporaryDirectory() as tmp:
        package = _package(pipeline_file, image, gpus, Path(tmp))  # bad image: before a request
        client, namespace = _connect(host, namespace)
        version = _upload(client, host, package, namespace)
        experiment_id = _experiment(client, host, experiment, namespace)
        previous = _recurring_runs_named(client, host, experiment_id, name)
        job = _ask(
            host,
            f"create recurring run {name!r}",
            client.create_recurring_run,
            experiment_id,
            job_name=name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=arguments,
            pipeline_id=version.pipeline_id,
            version_id=version.version_id,
        )
        log.info("scheduled %s (%s) on %r", name, job.recurring_run_id, cron)
        for old in previous:
            try:
                _ask(host, f"delete recurring run {old}", client.delete_recurring_run, old)
            except ClusterError as err:
                raise type(err)(
                    f"{err}; the new recurring run {name!r} {job.recurring_run_id} is "
                    f"scheduled and the old one {old} still is too: delete {old} by hand"
                ) from err
            log.info("deleted the previous recurring run %s (%s)", name, old)
    return Scheduled(
        host,
        version,
        experiment_id,
        job.recurring_run_id,
        name,
        cron,
        tuple(previous),
        namespace,
    )


class _Client(kfp.Client):
    """The stock client, asking for health once, keeping the whole answer.

    Its own loop retries five times, five seconds apart, logging a traceback each time: a
    refused token would take 25 s and a screen of noise to report. The generated API model
    keeps only ``multi_user`` of the health answer; the backend's version (``tag_name``) is
    read from the JSON itself. A namespace the client finds itself stays in memory rather than
    being written to the kfp context file.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._health: dict[str, Any] | None = None
        super().__init__(**kwargs)

    def health(self) -> dict[str, Any]:
        """The JSON of ``GET /apis/v2beta1/healthz``, asked once per client."""
        if self._health is None:
            response = self._healthz_api.healthz_service_get_healthz(_preload_content=False)
            try:
                answer = json.loads(response.data)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise ClusterRequestFailed(
                    f"Kubeflow Pipelines at {self._existing_config.host} answered its health "
                    "check with something other than JSON (a sign-in page?): check the host "
                    f"and {TOKEN_ENV}"
                )
            self._health = answer
        return self._health

    def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
        from kfp_server_api import V2beta1GetHealthzResponse

        return V2beta1GetHealthzResponse(multi_user=self.health().get("multi_user") is True)

    def set_user_namespace(self, namespace: str) -> None:
        self._context_setting["namespace"] = namespace


def _credentials(host: str) -> tuple[dict[str, Any], str]:
    """The client's keyword arguments for authentication, and how it authenticates, in words."""
    token = os.environ.get(TOKEN_ENV) or None
    if token:
        return {"existing_token": token}, f"bearer token from {TOKEN_ENV}"
    named = os.environ.get(SA_TOKEN_ENV)
    path = Path(named or SA_TOKEN_PATH)
    if not named and not path.exists():
        return {}, "no token"
    try:
        readable = bool(path.read_text(encoding="utf-8").strip())
    except OSError as err:
        raise ClusterError(
            f"cannot read the service-account token for Kubeflow Pipelines at {host}: "
            f"{path}: {err.strerror or err}"
        ) from err
    if not readable:
        raise ClusterError(f"the service-account token file {path} for {host} is empty")
    credentials = kfp.client.ServiceAccountTokenVolumeCredentials(str(path))
    return {"credentials": credentials}, f"service-account token {path}"


def _connect(host: str, namespace: str | None) -> tuple[kfp.Client, str | None]:
    """A client for ``host`` and the namespace to create things in (None: single-user).

    Raises UnsupportedBackend or NamespaceRequired after the health check, before any upload.
    """
    from kfp_server_api.exceptions import ApiException

    auth, how = _credentials(host)
    log.debug("connecting to %s (%s)", host, how)
    try:
        with warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": always.
            warnings.simplefilter("ignore", FutureWarning)
            client = _ask(host, "check its health", _Client, host=host, **auth)
        health = _ask(host, "check its health", client.health)  # asked once, kept
    except ClusterRequestFailed as err:
        if isinstance(err.__cause__, ApiException) and err.__cause__.status == 404:
            raise UnsupportedBackend(
                f"Kubeflow Pipelines at {host} has no v2beta1 API (GET /apis/v2beta1/healthz "
                f"is 404): this pipeline needs a 2.x backend, {_minimum()} or later"
            ) from err
        raise
    backend = _backend(host, health)
    if not backend.multi_user:
        if namespace:
            log.info(
                "Kubeflow Pipelines at %s is single-user: namespace %r ignored", host, namespace
            )
        return client, None
    namespace = (namespace or "").strip() or default_namespace()
    if not namespace:
        raise NamespaceRequired(
            f"Kubeflow Pipelines at {host} is multi-user: name the profile namespace to run in "
            "(--namespace or KFP_NAMESPACE); none was given, no kfp context names one, and "
            "this is not a pod with a service-account namespace"
        )
    client.set_user_namespace(namespace)
    log.info("multi-user Kubeflow Pipelines at %s: namespace %s", host, namespace)
    return client, namespace


def _backend(host: str, health: dict[str, Any]) -> Backend:
    """The backend's health answer, refused when older than :data:`MIN_BACKEND`."""
    tag = health.get("tag_name")
    found = backend_version(tag)
    needs = f"this pipeline needs {_minimum()} or later (its exit handler takes a "
    needs += "PipelineTaskFinalStatus, which older backends reject)"
    if found is None:
        said = "no version" if tag is None else f"version {tag!r}, not a release number"
        log.warning("Kubeflow Pipelines at %s reports %s; going on, but %s", host, said, needs)
    elif found[:2] < MIN_BACKEND:
        raise UnsupportedBackend(f"Kubeflow Pipelines at {host} is version {tag}; {needs}")
    else:
        log.debug("Kubeflow Pipelines at %s is version %s", host, tag)
    return Backend(multi_user=health.get("multi_user") is True, version=tag)


def _minimum() -> str:
    return ".".join(map(str, MIN_BACKEND))


def _check_package(pipeline_file: Path | None, image: str | None) -> None:
    """Refuse a pipeline file that is missing or not this pipeline's IR, before any request."""
    if pipeline_file is None:
        return
    if image:
        raise ValueError(
            f"give an image or a pipeline file, not both: {pipeline_file} names its own image"
        )
    path = Path(pipeline_file)
    if not path.is_file():
        raise FileNotFoundError(f"pipeline file {path} does not exist")
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"pipeline file {path}: expected the IR YAML of `cxrgaze compile`")
    try:
        # libyaml's loader when present: the IR is ~50 kB, a tenth of a second in pure Python.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        spec = next(yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader), None)
    except yaml.YAMLError as err:
        raise ValueError(f"pipeline file {path} is not YAML: {err}") from err
    name = spec.get("pipelineInfo", {}).get("name") if isinstance(spec, dict) else None
    if name != PIPELINE_NAME:
        raise ValueError(
            f"pipeline file {path}: pipelineInfo.name is {name!r}, expected {PIPELINE_NAME!r}"
        )


def _package(pipeline_file: Path | None, image: str | None, gpus: int, tmp: Path) -> Path:
    if pipeline_file is not None:
        return Path(pipeline_file)
    from pipelines.compile import DEFAULT_IMAGE, compile_pipeline

    # KFP reads the package format from the file name; this one is also what the UI shows.
    return compile_pipeline(tmp / f"{PIPELINE_NAME}.yaml", image or DEFAULT_IMAGE, gpus)


def version_name(package: Path) -> str:
    """``cxr-gaze-training-<UTC yyyymmdd-hhmmss>-<sha256[:8] of the file>``."""
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    return f"{PIPELINE_NAME}-{_stamp()}-{digest}"


def _upload(client: kfp.Client, host: str, package: Path, namespace: str | None) -> PipelineVersion:
    """A new version of the pipeline (in ``namespace`` when multi-user: a shared pipeline
    would need write access to the KFP system namespace), or the pipeline itself."""
    pipeline_id = _pipeline_id(client, host, namespace)
    if pipeline_id is None:
        pipeline = _ask(
            host,
            f"upload pipeline {PIPELINE_NAME}",
            client.upload_pipeline,
            str(package),
            pipeline_name=PIPELINE_NAME,
            namespace=namespace,
        )
        # The upload creates the pipeline's first version; the run must name it explicitly.
        listed = _ask(
            host,
            "list the pipeline's versions",
            client.list_pipeline_versions,
            pipeline.pipeline_id,
            page_size=1,
            sort_by="created_at desc",
        )
        if not listed.pipeline_versions:
            raise ClusterRequestFailed(
                f"Kubeflow Pipelines at {host} lists no version of the pipeline it just "
                f"created ({pipeline.pipeline_id})"
            )
        first = listed.pipeline_versions[0]
        version = PipelineVersion(
            pipeline.pipeline_id, first.pipeline_version_id, first.display_name, True
        )
    else:
        name = version_name(package)
        uploaded = _ask(
            host,
            f"upload pipeline version {name}",
            client.upload_pipeline_version,
            str(package),
            name,
            pipeline_id=pipeline_id,
        )
        version = PipelineVersion(pipeline_id, uploaded.pipeline_version_id, name, False)
    log.info("uploaded %s as %s (%s)", package.name, version.version_name, version.version_id)
    return version


def _pipeline_id(client: kfp.Client, host: str, namespace: str | None) -> str | None:
    """The id of the pipeline named :data:`PIPELINE_NAME` (in ``namespace``), else None.

    ``Client.get_pipeline_id`` cannot be used: it lists shared pipelines only.
    """
    by_name = json.dumps(
        {
            "predicates": [
                {"operation": "EQUALS", "key": "display_name", "stringValue": PIPELINE_NAME}
            ]
        }
    )
    listed = _ask(
        host,
        "look up the pipeline",
        client.list_pipelines,
        page_size=2,
        filter=by_name,
        namespace=namespace,
    )
    found = [p for p in listed.pipelines or [] if p.display_name == PIPELINE_NAME]
    if len(found) > 1:
        raise ClusterRequestFailed(
            f"Kubeflow Pipelines at {host} has {len(found)} pipelines named {PIPELINE_NAME}"
            + (f" in namespace {namespace}" if namespace else "")
            + ": delete all but one"
        )
    return found[0].pipeline_id if found else None


def _experiment(client: kfp.Client, host: str, name: str, namespace: str | None) -> str:
    # create_experiment returns the experiment of that name when it exists.
    where = f" in namespace {namespace}" if namespace else ""
    found = _ask(
        host,
        f"get or create experiment {name!r}{where}",
        client.create_experiment,
        name,
        namespace=namespace,
    )
    return found.experiment_id


def _recurring_runs_named(
    client: kfp.Client, host: str, experiment_id: str, name: str
) -> list[str]:
    by_name = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    )
    found: list[str] = []
    token = ""
    while True:
        page = _ask(
            host,
            "list recurring runs",
            client.list_recurring_runs,
            page_token=token,
            page_size=100,
            experiment_id=experiment_id,
            filter=by_name,
        )
        # The name filter is the server's; the check here keeps a server that ignores it safe.
        found += [r.recurring_run_id for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def _ask(host: str, what: str, call: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` with transport and HTTP errors turned into one-line errors."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call(*args, **kwargs)
    except HTTPError as err:
        raise ClusterUnreachable(
            f"cannot reach Kubeflow Pipelines at {host} to {what}: {_root_cause(err)}"
        ) from err
    except ApiException as err:
        if not err.status:  # the client's code for TLS and other transport failures
            raise ClusterUnreachable(
                f"cannot reach Kubeflow Pipelines at {host} to {what}: {err.reason}"
            ) from err
        detail = _server_message(err.body)
        raise ClusterRequestFailed(
            f"Kubeflow Pipelines at {host} refused to {what}: HTTP {err.status} {err.reason}"
            + (f" ({detail})" if detail else "")
            + (
                f"; is {TOKEN_ENV} (or the service-account token) set, current and allowed?"
                if err.status in (401, 403)
                else ""
            )
        ) from err


def _root_cause(err: BaseException) -> str:
    """The innermost OS-level reason ("[Errno 111] Connection refused"), else the error text."""
    seen = getattr(err, "reason", None) or err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return f"[Errno {seen.errno}] {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    return str(getattr(err, "reason", None) or err)


def _server_message(body: Any) -> str:
    """The ``message`` of a grpc-gateway error body, else its first 200 characters."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return str(body).strip()[:200]
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or "")[:200]
    return ""


class _KfpRootLogs(logging.Filter):
    """Turns what kfp's client logs on the root logger (``logging.info(...)``, e.g. "Failed to
    automatically set namespace.") into DEBUG lines of this module."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}kfp{os.sep}" not in record.pathname:
            return True
        log.debug("kfp: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the client's "... details: <link>" prints off stdout (the summary names the links),
    its root-logger notes and urllib3's retry warnings off stderr (a failure ends in one error
    naming the host); all stay visible at DEBUG."""
    chatter = io.StringIO()
    pool_log = logging.getLogger("urllib3.connectionpool")
    pool_level = pool_log.level
    root_filter = _KfpRootLogs()
    if not log.isEnabledFor(logging.DEBUG):
        pool_log.setLevel(logging.ERROR)
        logging.getLogger().addFilter(root_filter)
    try:
        with contextlib.redirect_stdout(chatter):
            yield
    finally:
        pool_log.setLevel(pool_level)
        logging.getLogger().removeFilter(root_filter)
        for line in chatter.getvalue().splitlines():
            log.debug("kfp: %s", line)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
