"""`cxrgaze submit` / `cxrgaze schedule` through the real kfp.Client, against a local KFP API.

The server below speaks the v2beta1 REST paths kfp_server_api calls (healthz, pipeline upload
and version upload as multipart, pipelines / versions / experiments / recurring runs lists with
the display-name filter, run and recurring-run creation, recurring-run deletion), answers JSON
shaped like the real API's, keeps state across calls and records every request. The tests read
the recorded requests: what was uploaded, in which order, with which parameters and token.

Like the real backend it is single-user or multi-user (``KfpApi.multi_user``): multi-user, a
pipeline belongs to the namespace it was uploaded to (none: shared), experiments are listed and
created in a namespace, which is required, and runs and recurring runs take their experiment's.
Its health answer is the backend's (``backend/src/apiserver/main.go``): ``commit_sha``,
``tag_name`` (the release, e.g. ``2.17.0``), ``multi_user``, ``pipeline_store``.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import logging
import re
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kfp
import pytest
import yaml
from typer.testing import CliRunner

import pipelines.cluster
from pipelines.cli import app
from pipelines.cluster import (
    ClusterError,
    ClusterRequestFailed,
    ClusterUnreachable,
    NamespaceRequired,
    UnsupportedBackend,
    backend_version,
    schedule,
    submit,
    validate_cron,
)
from pipelines.compile import compile_pipeline
from pipelines.training_pipeline import PIPELINE_NAME

API = "/apis/v2beta1"
IMAGE = "registry.example.org/cxr-gaze:9.9.9"
TOKEN = "s3cr3t-t0ken-value"
ARGS = {
    "raw_dir": "/data/egd-cxr-release",
    "preset": "ci",
    "overrides": ["stages.s2.max_epochs=1"],
    "data_rev": "v3",
    "tracking_uri": "http://mlflow.mlflow.svc:5000",
}
runner = CliRunner()


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    json: Any = None
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)

    def q(self, key: str) -> str | None:
        return self.query.get(key, [None])[0]


class KfpApi:
    """In-memory Kubeflow Pipelines v2beta1 API state; ids are predictable (``pipeline-1``).

    ``fail`` maps ``(method, path below /apis/v2beta1)`` to the (status, body) to answer
    instead; ``after`` is called with each request once it is answered.
    """

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.multi_user = False
        self.version: str | None = "2.17.0"
        self.fail: dict[tuple[str, str], tuple[int, Any]] = {}
        self.after: Callable[[Recorded], None] | None = None
        self.requests: list[Recorded] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.lock = threading.Lock()
        self._ids = itertools.count(1)
        self._clock = itertools.count(1)

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    def stamp(self) -> str:
        return f"2026-01-01T00:00:{next(self._clock):02d}Z"

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def namespace(self, given: str | None) -> str:
        """The namespace a request acts in: single-user, always none (the real server's
        ``ReplaceNamespace``)."""
        return (given or "") if self.multi_user else ""

    def route(self, req: Recorded) -> tuple[int, Any]:
        """(HTTP status, JSON body, or text) for one request."""
        if self.token is not None and req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthenticated", "code": 16, "message": "no valid token"}
        path = req.path.removeprefix(API)
        key = (req.method, path)
        if key in self.fail:
            return self.fail[key]
        if key == ("GET", "/healthz"):
            health = {"commit_sha": "0a1b2c3", "multi_user": self.multi_user}
            health["pipeline_store"] = "database"
            if self.version is not None:
                health["tag_name"] = self.version
            return 200, health
        if key == ("GET", "/pipelines"):
            namespace = self.namespace(req.q("namespace"))
            pipelines = [p for p in self.pipelines.values() if p["namespace"] == namespace]
            return 200, self.listed("pipelines", pipelines, req)
        if key == ("POST", "/pipelines/upload"):
            return self.upload(req, pipeline_id=None)
        if key == ("POST", "/pipelines/upload_version"):
            if req.q("pipelineid") not in self.pipelines:
                return 404, {"code": 5, "message": f"pipeline {req.q('pipelineid')} not found"}
            return self.upload(req, pipeline_id=req.q("pipelineid"))
        if (m := re.fullmatch(r"/pipelines/([^/]+)/versions", path)) and req.method == "GET":
            versions = [v for v in self.versions.values() if v["pipeline_id"] == m[1]]
            if req.q("sort_by") == "created_at desc":
                versions.reverse()
            return 200, self.listed("pipeline_versions", versions, req)
        if key == ("GET", "/experiments"):
            namespace = self.namespace(req.q("namespace"))
            if self.multi_user and not namespace:
                return 400, {"code": 3, "message": "Invalid input error: namespace is empty"}
            found = [e for e in self.experiments.values() if e["namespace"] == namespace]
            return 200, self.listed("experiments", found, req)
        if key == ("POST", "/experiments"):
            namespace = self.namespace(req.json.get("namespace"))
            if self.multi_user and not namespace:
                return 400, {"code": 3, "message": "Invalid input error: namespace is empty"}
            experiment = dict(req.json, experiment_id=self.new_id("experiment"))
            experiment.update(created_at=self.stamp(), storage_state="AVAILABLE")
            experiment["namespace"] = namespace
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if key == ("POST", "/runs"):
            if req.json.get("experiment_id") not in self.experiments:
                return 400, {"code": 3, "message": "Invalid input error: no experiment"}
            run = dict(req.json, run_id=self.new_id("run"), created_at=self.stamp())
            self.runs[run["run_id"]] = run
            return 200, run
        if key == ("GET", "/recurringruns"):
            jobs = [
                j
                for j in self.recurring.values()
                if req.q("experiment_id") in (None, j["experiment_id"])
            ]
            # The real API's JSON name for this field is camel case, unlike its siblings.
            return 200, self.listed("recurringRuns", jobs, req)
        if key == ("POST", "/recurringruns"):
            experiment = self.experiments.get(req.json.get("experiment_id"))
            if experiment is None:
                return 400, {"code": 3, "message": "Invalid input error: no experiment"}
            job = dict(req.json, recurring_run_id=self.new_id("recurring"))
            # The server files a recurring run under its experiment's namespace.
            job.update(created_at=self.stamp(), status="ENABLED")
            job["namespace"] = experiment["namespace"]
            self.recurring[job["recurring_run_id"]] = job
            return 200, job
        if (m := re.fullmatch(r"/recurringruns/([^/:]+)", path)) and req.method == "DELETE":
            if self.recurring.pop(m[1], None) is None:
                return 404, {"code": 5, "message": f"recurring run {m[1]} not found"}
            return 200, {}
        return 404, {"code": 5, "message": f"no route {req.method} {req.path}"}

    def upload(self, req: Recorded, pipeline_id: str | None) -> tuple[int, dict]:
        """A new pipeline with its first version (``pipeline_id`` None), else a new version."""
        if "uploadfile" not in req.files:
            return 400, {"code": 3, "message": "no uploadfile"}
        name = req.q("name") or req.files["uploadfile"][0]
        pipeline = None
        if pipeline_id is None:
            pipeline_id = self.new_id("pipeline")
            pipeline = {"pipeline_id": pipeline_id, "name": name, "display_name": name}
            pipeline.update(namespace=self.namespace(req.q("namespace")), created_at=self.stamp())
            self.pipelines[pipeline_id] = pipeline
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self.new_id("version"),
            "name": name,
            "display_name": name,
            "created_at": self.stamp(),
        }
        self.versions[version["pipeline_version_id"]] = version
        return 200, pipeline or version

    @staticmethod
    def listed(key: str, items: Any, req: Recorded) -> dict:
        """A list response: display-name filter, page_size / page_token paging; like the real
        API (proto3 JSON) it leaves out an empty list."""
        items = list(items)
        if req.q("filter"):
            for predicate in json.loads(req.q("filter"))["predicates"]:
                assert predicate["key"] == "display_name", predicate
                assert predicate["operation"] in (1, "EQUALS"), predicate
                items = [i for i in items if i.get("display_name") == predicate["stringValue"]]
        start = int(req.q("page_token") or 0)
        size = int(req.q("page_size") or 0) or len(items) or 1
        page = items[start : start + size]
        body: dict[str, Any] = {"total_size": len(items)}
        if page:
            body[key] = page
        if start + size < len(items):
            body["next_page_token"] = str(start + size)
        return body


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


def handler_for(api: KfpApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def handle_any(self) -> None:
            url = urlsplit(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ctype = self.headers.get("Content-Type", "")
            req = Recorded(
                self.command,
                url.path,
                parse_qs(url.query),
                {k.lower(): v for k, v in self.headers.items()},
            )
            if ctype.startswith("multipart/form-data"):
                req.files = parse_multipart(ctype, body)
            elif body:
                req.json = json.loads(body)
            with api.lock:
                api.requests.append(req)
                status, answer = api.route(req)
                if api.after is not None:
                    api.after(req)
            text = isinstance(answer, str)
            data = (answer if text else json.dumps(answer)).encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html" if text else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = handle_any

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> KfpApi:
    return KfpApi()


@dataclass(frozen=True)
class Pod:
    """Where the client looks for a namespace and a token: kfp's context file, the pod's
    service-account namespace file, the projected KFP token (all absent until written)."""

    context: Path
    namespace: Path
    token: Path


@pytest.fixture
def pod(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pod:
    folder = tmp_path / "pod"
    folder.mkdir()
    pod = Pod(folder / "context.json", folder / "namespace", folder / "token")
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(pod.context))
    monkeypatch.setattr(kfp.Client, "_NAMESPACE_PATH", str(pod.namespace))
    monkeypatch.setattr(pipelines.cluster, "SA_TOKEN_PATH", str(pod.token))
    return pod


@pytest.fixture
def host(api: KfpApi, pod: Pod, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A KFP API on 127.0.0.1 (port 0), serving ``api``; no token, namespace or kfp context
    from this machine."""
    for name in ("KFP_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KFP_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(api))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("ir") / "pipeline.yaml", IMAGE)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def images_in(package: bytes) -> set[str]:
    spec = next(yaml.load_all(package, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    return {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}


def test_first_submit_uploads_the_compiled_pipeline_and_runs_that_version(
    api: KfpApi, host: str, compiled: Path
) -> None:
    result = submit(host, image=IMAGE, arguments=ARGS, run_name="nightly")

    assert [(r.method, r.path.removeprefix(API)) for r in api.requests] == [
        ("GET", "/healthz"),
        ("GET", "/pipelines"),
        ("POST", "/pipelines/upload"),
        ("GET", f"/pipelines/{result.version.pipeline_id}/versions"),
        ("GET", "/experiments"),
        ("POST", "/experiments"),
        ("POST", "/runs"),
    ]
    lookup = json.loads(api.calls("GET", "/pipelines")[0].q("filter"))["predicates"][0]
    assert lookup["stringValue"] == PIPELINE_NAME
    (upload,) = api.calls("POST", "/pipelines/upload")
    assert upload.q("name") == PIPELINE_NAME
    filename, package = upload.files["uploadfile"]
    assert filename.endswith(".yaml")
    assert package == compiled.read_bytes()  # compiled by submit, for the requested image
    assert images_in(package) == {IMAGE}

    (created,) = api.calls("POST", "/experiments")
    assert created.json["display_name"] == "cxr-gaze"
    (run,) = api.calls("POST", "/runs")
    assert run.json["display_name"] == "nightly"
    assert run.json["experiment_id"] == result.experiment_id
    assert run.json["runtime_config"]["parameters"] == ARGS
    assert run.json["pipeline_version_reference"] == {
        "pipeline_id": result.version.pipeline_id,
        "pipeline_version_id": result.version.version_id,
    }
    assert "pipeline_spec" not in run.json  # the run points at the upload, not a copy of it
    assert result.version.new_pipeline
    assert api.versions[result.version.version_id]["pipeline_id"] == result.version.pipeline_id
    assert result.run_id in api.runs
    assert result.url == f"{host}/#/runs/details/{result.run_id}"


def test_second_submit_uploads_a_new_version_of_the_same_pipeline(
    api: KfpApi, host: str, compiled: Path
) -> None:
    first = submit(host, arguments=ARGS, pipeline_file=compiled)
    n_first = len(api.requests)
    second = submit(host, arguments=dict(ARGS, preset="demo"), pipeline_file=compiled)
    later = api.requests[n_first:]

    assert len(api.calls("POST", "/pipelines/upload")) == 1
    (upload,) = [r for r in later if r.path == f"{API}/pipelines/upload_version"]
    assert upload.q("pipelineid") == first.version.pipeline_id
    digest = hashlib.sha256(compiled.read_bytes()).hexdigest()[:8]
    assert re.fullmatch(rf"{PIPELINE_NAME}-\d{{8}}-\d{{6}}-{digest}", upload.q("name"))
    assert upload.files["uploadfile"][1] == compiled.read_bytes()
    assert not second.version.new_pipeline
    assert second.version.pipeline_id == first.version.pipeline_id
    assert second.version.version_id != first.version.version_id
    assert second.version.version_name == upload.q("name")

    assert len(api.calls("POST", "/experiments")) == 1  # the experiment is found, not remade
    assert second.experiment_id == first.experiment_id
    run = api.runs[second.run_id]
    assert run["pipeline_version_reference"]["pipeline_version_id"] == second.version.version_id
    assert run["runtime_config"]["parameters"]["preset"] == "demo"


def test_token_from_the_environment_is_the_bearer_of_every_request(
    api: KfpApi, host: str, compiled: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    api.token = TOKEN
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    with caplog.at_level(logging.DEBUG):
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert len(api.requests) == 7
    assert {r.headers.get("authorization") for r in api.requests} == {f"Bearer {TOKEN}"}
    assert TOKEN not in caplog.text


def test_a_refused_token_is_one_error_naming_the_host(
    api: KfpApi, host: str, compiled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.token = TOKEN
    monkeypatch.setenv("KFP_TOKEN", "expired-token")
    with pytest.raises(ClusterRequestFailed, match="HTTP 401") as err:
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert host in str(err.value) and "KFP_TOKEN" in str(err.value)
    assert "expired-token" not in str(err.value)
    assert len(api.requests) == 1  # one health check, no retry loop


def test_schedule_creates_a_recurring_run_on_the_six_field_cron(
    api: KfpApi, host: str, compiled: Path
) -> None:
    result = schedule(
        host, cron="0 0 3 * * 1", name="weekly-retrain", arguments=ARGS, pipeline_file=compiled
    )

    (listed,) = api.calls("GET", "/recurringruns")
    assert listed.q("experiment_id") == result.experiment_id
    assert not api.calls("DELETE", f"/recurringruns/{result.recurring_run_id}")
    (created,) = api.calls("POST", "/recurringruns")
    job = created.json
    assert job["display_name"] == "weekly-retrain"
    assert job["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert job["max_concurrency"] == 1
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["experiment_id"] == result.experiment_id
    assert job["runtime_config"]["parameters"] == ARGS
    assert job["pipeline_version_reference"]["pipeline_version_id"] == result.version.version_id
    assert list(api.recurring) == [result.recurring_run_id]
    assert result.replaced == ()


def test_scheduling_the_same_name_again_replaces_the_old_recurring_run_once_the_new_exists(
    api: KfpApi, host: str, compiled: Path
) -> None:
    other = schedule(
        host, cron="0 30 1 * * *", name="nightly", arguments=ARGS, pipeline_file=compiled
    )
    first = schedule(
        host, cron="0 0 3 * * 1", name="weekly-retrain", arguments=ARGS, pipeline_file=compiled
    )
    n_first = len(api.requests)
    second = schedule(
        host, cron="0 0 4 * * 2", name="weekly-retrain", arguments=ARGS, pipeline_file=compiled
    )
    later = [(r.method, r.path.removeprefix(API)) for r in api.requests[n_first:]]

    delete = ("DELETE", f"/recurringruns/{first.recurring_run_id}")
    assert delete in later
    assert later.index(("POST", "/recurringruns")) < later.index(delete)
    assert later[-1] == delete
    assert second.replaced == (first.recurring_run_id,)
    assert set(api.recurring) == {other.recurring_run_id, second.recurring_run_id}
    assert api.recurring[second.recurring_run_id]["trigger"]["cron_schedule"]["cron"] == (
        "0 0 4 * * 2"
    )
    assert second.version.version_id != first.version.version_id


@pytest.mark.parametrize(
    "cron", ["0 3 * * 1", "0 0 3 * * 1 2027", "", "0 0 3 * * mon;reboot"], ids=repr
)
def test_a_bad_cron_is_refused_before_any_request(api: KfpApi, host: str, cron: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        schedule(host, cron=cron, name="weekly-retrain", arguments=ARGS)
    assert api.requests == []


def test_robfig_cron_forms_are_accepted() -> None:
    assert validate_cron(" 0 0 3  ? * MON-FRI ") == "0 0 3 ? * MON-FRI"
    assert validate_cron("*/30 0 */2 1,15 * 0") == "*/30 0 */2 1,15 * 0"


def test_a_pipeline_file_of_another_pipeline_is_refused_before_any_request(
    api: KfpApi, host: str, tmp_path: Path
) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("pipelineInfo:\n  name: something-else\n", encoding="utf-8")
    with pytest.raises(ValueError, match="something-else"):
        submit(host, arguments=ARGS, pipeline_file=other)
    with pytest.raises(FileNotFoundError, match=r"missing\.yaml"):
        submit(host, arguments=ARGS, pipeline_file=tmp_path / "missing.yaml")
    assert api.requests == []


def test_an_unreachable_host_raises_naming_it(closed_port: int, compiled: Path) -> None:
    host = f"http://127.0.0.1:{closed_port}"
    with pytest.raises(ClusterUnreachable, match=re.escape(host)):
        submit(host, arguments=ARGS, pipeline_file=compiled)


def test_cli_submit_and_schedule_print_the_links(api: KfpApi, host: str, compiled: Path) -> None:
    common = ["--host", host, "--raw-dir", "/data/egd-cxr-release", "--preset", "ci",
              "--set", "stages.s2.max_epochs=1", "--data-rev", "v3",
              "--pipeline-file", str(compiled)]  # fmt: skip
    submitted = runner.invoke(app, ["submit", *common, "--experiment", "retrain"])
    assert submitted.exit_code == 0, submitted.output
    (run_id,) = api.runs
    assert f"{host}/#/runs/details/{run_id}" in submitted.output
    parameters = api.runs[run_id]["runtime_config"]["parameters"]
    assert parameters == {
        "raw_dir": "/data/egd-cxr-release", "preset": "ci",
        "overrides": ["stages.s2.max_epochs=1"], "data_rev": "v3", "tracking_uri": "",
        "data_remote": "",
    }  # fmt: skip
    assert [e["display_name"] for e in api.experiments.values()] == ["retrain"]

    scheduled = runner.invoke(
        app, ["schedule", *common, "--cron", "0 0 3 * * 1", "--name", "weekly-retrain"]
    )
    assert scheduled.exit_code == 0, scheduled.output
    (job_id,) = api.recurring
    assert f"{host}/#/recurringrun/details/{job_id}" in scheduled.output
    assert api.recurring[job_id]["runtime_config"]["parameters"] == parameters


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cron", "0 3 * * 1"], "has 5 field(s)"),
        (["--cron", "0 0 3 * * 1", "--set", "stages.s9.max_epochs=1"], "stages.s9"),
        (["--cron", "0 0 3 * * 1", "--image", "Not An Image"], "not a container image"),
    ],
    ids=["cron", "override", "image"],
)
def test_cli_bad_input_exits_2_before_any_request(
    api: KfpApi, host: str, extra: list[str], message: str
) -> None:
    args = ["schedule", "--host", host, "--raw-dir", "/data/raw", "--name", "weekly", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert api.requests == []


def test_cli_unreachable_host_exits_2_with_one_line_naming_it(
    closed_port: int, compiled: Path
) -> None:
    host = f"http://127.0.0.1:{closed_port}"
    args = ["submit", "--host", host, "--raw-dir", "/data/raw", "--pipeline-file", str(compiled)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"cannot reach Kubeflow Pipelines at {host}" in lines[0]
    assert "Connection refused" in lines[0]


# -- multi-user Kubeflow (profiles) ---------------------------------------------------------------


def paths(requests: list[Recorded]) -> list[tuple[str, str]]:
    return [(r.method, r.path.removeprefix(API)) for r in requests]


@pytest.fixture
def profiles(api: KfpApi) -> KfpApi:
    """A multi-user backend that already holds a shared pipeline of the same name, which a
    profile's submit must neither find nor add versions to (writing it needs rights in the
    KFP system namespace)."""
    api.multi_user = True
    shared = {"pipeline_id": "pipeline-shared", "display_name": PIPELINE_NAME, "namespace": ""}
    api.pipelines["pipeline-shared"] = dict(shared, name=PIPELINE_NAME)
    return api


def test_multi_user_submit_puts_pipeline_experiment_and_run_in_the_namespace(
    profiles: KfpApi, host: str, compiled: Path
) -> None:
    api = profiles
    result = submit(host, arguments=ARGS, pipeline_file=compiled, namespace="team-a")

    assert paths(api.requests) == [
        ("GET", "/healthz"),
        ("GET", "/pipelines"),
        ("POST", "/pipelines/upload"),
        ("GET", f"/pipelines/{result.version.pipeline_id}/versions"),
        ("GET", "/experiments"),
        ("POST", "/experiments"),
        ("POST", "/runs"),
    ]
    # As kfp 2.17's client sends it: a query parameter on lists and uploads, a body field on
    # the experiment; a v2beta1 run has no namespace field and takes its experiment's.
    (lookup,) = api.calls("GET", "/pipelines")
    (upload,) = api.calls("POST", "/pipelines/upload")
    (listed,) = api.calls("GET", "/experiments")
    assert lookup.q("namespace") == upload.q("namespace") == listed.q("namespace") == "team-a"
    (created,) = api.calls("POST", "/experiments")
    assert created.json["namespace"] == "team-a"
    (run,) = api.calls("POST", "/runs")
    assert "namespace" not in run.json
    assert run.json["experiment_id"] == result.experiment_id
    assert api.experiments[result.experiment_id]["namespace"] == "team-a"
    assert result.version.pipeline_id != "pipeline-shared"
    assert api.pipelines[result.version.pipeline_id]["namespace"] == "team-a"
    assert result.namespace == "team-a"
    assert f"experiment {result.experiment_id} in namespace team-a" in result.describe()

    again = submit(host, arguments=ARGS, pipeline_file=compiled, namespace="team-a")
    (version,) = api.calls("POST", "/pipelines/upload_version")
    assert version.q("pipelineid") == result.version.pipeline_id
    assert again.experiment_id == result.experiment_id
    assert len(api.calls("POST", "/experiments")) == 1


def test_multi_user_schedule_files_the_recurring_run_under_the_namespace(
    profiles: KfpApi, host: str, compiled: Path
) -> None:
    api = profiles
    first = schedule(
        host, cron="0 0 3 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled,
        namespace="team-a",
    )  # fmt: skip
    second = schedule(
        host, cron="0 0 4 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled,
        namespace="team-a",
    )  # fmt: skip
    assert {r.q("experiment_id") for r in api.calls("GET", "/recurringruns")} == {
        first.experiment_id
    }
    assert list(api.recurring) == [second.recurring_run_id]
    assert api.recurring[second.recurring_run_id]["namespace"] == "team-a"
    assert second.replaced == (first.recurring_run_id,)


def test_a_single_user_backend_ignores_the_namespace(
    api: KfpApi, host: str, compiled: Path
) -> None:
    result = submit(host, arguments=ARGS, pipeline_file=compiled, namespace="team-a")
    assert not [r.path for r in api.requests if r.q("namespace")]
    (created,) = api.calls("POST", "/experiments")
    assert not created.json.get("namespace")
    assert result.namespace is None
    assert "namespace" not in result.describe()


def test_multi_user_without_a_namespace_stops_after_the_health_check(
    profiles: KfpApi, host: str, compiled: Path
) -> None:
    with pytest.raises(NamespaceRequired) as err:
        submit(host, arguments=ARGS, pipeline_file=compiled)
    message = str(err.value)
    assert "\n" not in message
    assert host in message and "--namespace" in message and "KFP_NAMESPACE" in message
    assert paths(profiles.requests) == [("GET", "/healthz")]


def test_the_namespace_defaults_to_the_kfp_context_then_the_pods_own(
    profiles: KfpApi, host: str, compiled: Path, pod: Pod
) -> None:
    api = profiles
    pod.context.write_text(json.dumps({"namespace": "from-context"}), encoding="utf-8")
    pod.namespace.write_text("from-pod\n", encoding="utf-8")
    assert submit(host, arguments=ARGS, pipeline_file=compiled).namespace == "from-context"
    assert submit(host, arguments=ARGS, pipeline_file=compiled, namespace="given").namespace == (
        "given"
    )
    pod.context.unlink()
    assert submit(host, arguments=ARGS, pipeline_file=compiled).namespace == "from-pod"
    assert not pod.context.exists()  # kfp would save what it found there; this client does not
    assert sorted(e["namespace"] for e in api.experiments.values()) == [
        "from-context", "from-pod", "given"
    ]  # fmt: skip
    assert {e["display_name"] for e in api.experiments.values()} == {"cxr-gaze"}
    assert len(api.calls("GET", "/healthz")) == 3  # one health check per call


def test_cli_namespace_from_the_option_or_kfp_namespace(
    profiles: KfpApi, host: str, compiled: Path
) -> None:
    api = profiles
    common = ["--host", host, "--raw-dir", "/data/raw", "--pipeline-file", str(compiled)]
    submitted = runner.invoke(app, ["submit", *common, "--namespace", "team-a"])
    assert submitted.exit_code == 0, submitted.output
    assert "in namespace team-a" in submitted.output
    scheduled = runner.invoke(
        app,
        ["schedule", *common, "--cron", "0 0 3 * * 1", "--name", "weekly"],
        env={"KFP_NAMESPACE": "team-b"},
    )
    assert scheduled.exit_code == 0, scheduled.output
    (job,) = api.recurring.values()
    assert job["namespace"] == "team-b"

    n_before = len(api.requests)
    missing = runner.invoke(app, ["submit", *common])
    assert missing.exit_code == 2, missing.output
    lines = missing.output.strip().splitlines()
    assert len(lines) == 1 and "multi-user" in lines[0] and "--namespace" in lines[0]
    assert paths(api.requests[n_before:]) == [("GET", "/healthz")]


# -- backend version ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "version"),
    [
        ("2.14.0", (2, 14, 0)),
        ("v2.15.2", (2, 15, 2)),
        ("2.16.0-rc.1", (2, 16, 0)),
        ("2.5", (2, 5, 0)),
        (" 1.8.5 ", (1, 8, 5)),
        ("unknown", None),
        ("master", None),
        ("0a1b2c3", None),
        ("", None),
        (None, None),
        (2.14, None),
    ],
    ids=repr,
)
def test_backend_version_reads_release_tags_only(tag: object, version: object) -> None:
    assert backend_version(tag) == version


@pytest.mark.parametrize("tag", ["2.13.1", "v2.5.0", "1.8.5"])
def test_a_backend_older_than_2_14_is_refused_before_any_upload(
    api: KfpApi, host: str, compiled: Path, tag: str
) -> None:
    api.version = tag
    with pytest.raises(UnsupportedBackend) as err:
        schedule(host, cron="0 0 3 * * 1", name="w", arguments=ARGS, pipeline_file=compiled)
    message = str(err.value)
    assert "\n" not in message
    assert f"version {tag}" in message and "2.14 or later" in message
    assert "PipelineTaskFinalStatus" in message and host in message
    assert paths(api.requests) == [("GET", "/healthz")]


@pytest.mark.parametrize("tag", ["2.14.0", "v2.15.2", "2.16.0-rc.1"])
def test_a_backend_from_2_14_on_is_used_without_a_warning(
    api: KfpApi, host: str, compiled: Path, tag: str, caplog: pytest.LogCaptureFixture
) -> None:
    api.version = tag
    submit(host, arguments=ARGS, pipeline_file=compiled)
    assert api.runs
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("tag", ["unknown", "master", None], ids=repr)
def test_an_unknown_backend_version_is_a_warning_and_the_run_goes_on(
    api: KfpApi, host: str, compiled: Path, tag: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    api.version = tag
    with caplog.at_level(logging.WARNING, logger="pipelines.cluster"):
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert api.runs
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "going on" in warning and "2.14 or later" in warning
    assert ("no version" if tag is None else repr(tag)) in warning


def test_a_backend_without_the_v2_api_is_refused(api: KfpApi, host: str, compiled: Path) -> None:
    api.fail[("GET", "/healthz")] = (404, {"code": 5, "message": "Not Found"})
    with pytest.raises(UnsupportedBackend, match=r"no v2beta1 API.*2\.14 or later"):
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert len(api.requests) == 1


def test_a_sign_in_page_instead_of_the_health_answer_is_one_error(
    api: KfpApi, host: str, compiled: Path
) -> None:
    api.fail[("GET", "/healthz")] = (200, "<html><body>Sign in</body></html>")
    with pytest.raises(ClusterRequestFailed, match=r"other than JSON.*sign-in page"):
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert len(api.requests) == 1


def test_cli_old_backend_exits_2_with_one_line(api: KfpApi, host: str, compiled: Path) -> None:
    api.version = "2.13.0"
    args = ["submit", "--host", host, "--raw-dir", "/data/raw", "--pipeline-file", str(compiled)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "version 2.13.0" in lines[0], result.output
    assert paths(api.requests) == [("GET", "/healthz")]


# -- replacing a recurring run --------------------------------------------------------------------


def test_a_failed_creation_keeps_the_old_recurring_run(
    api: KfpApi, host: str, compiled: Path
) -> None:
    first = schedule(
        host, cron="0 0 3 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled
    )
    n_first = len(api.requests)
    api.fail[("POST", "/recurringruns")] = (500, {"code": 13, "message": "scheduler is down"})
    with pytest.raises(ClusterRequestFailed, match="scheduler is down"):
        schedule(host, cron="0 0 4 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled)
    assert list(api.recurring) == [first.recurring_run_id]
    assert not [r for r in api.requests[n_first:] if r.method == "DELETE"]


def test_a_failed_deletion_leaves_both_scheduled_and_names_them(
    api: KfpApi, host: str, compiled: Path
) -> None:
    first = schedule(
        host, cron="0 0 3 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled
    )
    api.fail[("DELETE", f"/recurringruns/{first.recurring_run_id}")] = (
        403,
        {"code": 7, "message": "no delete permission"},
    )
    with pytest.raises(ClusterRequestFailed) as err:
        schedule(host, cron="0 0 4 * * 1", name="weekly", arguments=ARGS, pipeline_file=compiled)
    (old, new) = api.recurring
    assert old == first.recurring_run_id
    message = str(err.value)
    assert "\n" not in message
    assert "no delete permission" in message and f"delete {old} by hand" in message
    assert f"'weekly' {new} is scheduled" in message


# -- the service-account token ---------------------------------------------------------------------


def test_the_projected_token_is_the_bearer_when_kfp_token_is_unset(
    api: KfpApi, host: str, compiled: Path, pod: Pod, caplog: pytest.LogCaptureFixture
) -> None:
    """Read before every request: a token the kubelet rotates mid-call is the one sent next."""
    pod.token.write_text("sa-token-1\n", encoding="utf-8")
    api.token = "sa-token-1"

    def rotate(req: Recorded) -> None:
        if req.path == f"{API}/pipelines/upload":
            pod.token.write_text("sa-token-2", encoding="utf-8")
            api.token = "sa-token-2"

    api.after = rotate
    with caplog.at_level(logging.DEBUG):
        submit(host, arguments=ARGS, pipeline_file=compiled)  # the default path
    bearers = [r.headers.get("authorization") for r in api.requests]
    upload = paths(api.requests).index(("POST", "/pipelines/upload"))
    assert set(bearers[: upload + 1]) == {"Bearer sa-token-1"}
    assert set(bearers[upload + 1 :]) == {"Bearer sa-token-2"}
    assert "sa-token" not in caplog.text
    assert f"service-account token {pod.token}" in caplog.text


def test_kfp_token_wins_and_the_token_path_comes_from_its_variable(
    api: KfpApi, host: str, compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("sa-token", encoding="utf-8")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(elsewhere))
    api.token = "sa-token"
    submit(host, arguments=ARGS, pipeline_file=compiled)
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    api.token = TOKEN
    n_first = len(api.requests)
    submit(host, arguments=ARGS, pipeline_file=compiled)
    assert {r.headers.get("authorization") for r in api.requests[:n_first]} == {"Bearer sa-token"}
    assert {r.headers.get("authorization") for r in api.requests[n_first:]} == {f"Bearer {TOKEN}"}


def test_a_token_path_that_names_no_file_fails_before_any_request(
    api: KfpApi, host: str, compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "not-mounted"))
    with pytest.raises(ClusterError, match="not-mounted"):
        submit(host, arguments=ARGS, pipeline_file=compiled)
    assert api.requests == []
