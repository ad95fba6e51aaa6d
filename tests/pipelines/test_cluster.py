"""`cxrgaze submit` / `cxrgaze schedule` through the real kfp.Client, against a local KFP API.

The server below speaks the v2beta1 REST paths kfp_server_api calls (healthz, pipeline upload
and version upload as multipart, pipelines / versions / experiments / recurring runs lists with
the display-name filter, run and recurring-run creation, recurring-run deletion), answers JSON
shaped like the real API's, keeps state across calls and records every request. The tests read
the recorded requests: what was uploaded, in which order, with which parameters and token.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.cluster import (
    ClusterRequestFailed,
    ClusterUnreachable,
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
    """In-memory Kubeflow Pipelines v2beta1 API state; ids are predictable (``pipeline-1``)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
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

    def route(self, req: Recorded) -> tuple[int, dict]:
        """(HTTP status, JSON body) for one request."""
        if self.token is not None and req.headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": "Unauthenticated", "code": 16, "message": "no valid token"}
        path = req.path.removeprefix(API)
        key = (req.method, path)
        if key == ("GET", "/healthz"):
            return 200, {"multi_user": False}
        if key == ("GET", "/pipelines"):
            return 200, self.listed("pipelines", self.pipelines.values(), req)
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
            return 200, self.listed("experiments", self.experiments.values(), req)
        if key == ("POST", "/experiments"):
            experiment = dict(req.json, experiment_id=self.new_id("experiment"))
            experiment.update(created_at=self.stamp(), storage_state="AVAILABLE")
            self.experiments[experiment["experiment_id"]] = experiment
            return 200, experiment
        if key == ("POST", "/runs"):
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
            job = dict(req.json, recurring_run_id=self.new_id("recurring"))
            job.update(created_at=self.stamp(), status="ENABLED")
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
            self.pipelines[pipeline_id] = pipeline = dict(pipeline, created_at=self.stamp())
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
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
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


@pytest.fixture
def host(api: KfpApi, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A KFP API on 127.0.0.1 (port 0), serving ``api``; no token in the environment."""
    monkeypatch.delenv("KFP_TOKEN", raising=False)
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


def test_scheduling_the_same_name_again_deletes_the_old_recurring_run_first(
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
    assert later.index(delete) < later.index(("POST", "/recurringruns"))
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
