"""The compiled pipeline: golden IR, DAG shape, GPU requests, caching, Kubernetes settings."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.train_stage import REQUIRE_GPU_ENV
from pipelines.cli import app
from pipelines.compile import DEFAULT_IMAGE, compile_pipeline
from pipelines.training_pipeline import (
    GPU_LABEL,
    MLFLOW_SECRET_KEYS,
    S3_SECRET_KEYS,
    TRAIN_STAGES,
    ClusterOptions,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "training_pipeline.yaml"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
TRAINING_TASKS = {"pretrain", "train-stage", "train-stage-2", "train-stage-3", "train-stage-4"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("ir") / "pipeline.yaml")


@pytest.fixture(scope="module")
def ir(compiled: Path) -> tuple[dict, dict]:
    spec, platform = yaml.safe_load_all(compiled.read_text(encoding="utf-8"))
    return spec, platform


def body_tasks(spec: dict) -> dict:
    """The tasks that train, evaluate and register: run unless the model is already trained."""
    return spec["components"]["comp-condition-6"]["dag"]["tasks"]


def test_fresh_compile_matches_golden(compiled: Path) -> None:
    fresh = compiled.read_text(encoding="utf-8")
    if UPDATE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(fresh, encoding="utf-8")
    assert GOLDEN.is_file(), f"no golden IR; run UPDATE_GOLDEN=1 pytest {__file__}"
    assert fresh == GOLDEN.read_text(encoding="utf-8"), (
        "the compiled pipeline changed; review `diff` against tests/golden/training_pipeline.yaml "
        "and rerun with UPDATE_GOLDEN=1 if the change is intended"
    )


def test_compile_is_deterministic(compiled: Path, tmp_path: Path) -> None:
    again = compile_pipeline(tmp_path / "again.yaml")
    assert again.read_bytes() == compiled.read_bytes()


def test_steps_and_edges(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    assert set(spec["root"]["dag"]["tasks"]) == {"exit-handler-1", "close-run"}
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert set(handler) == {"open-run", "condition-branches-2"}
    assert handler["condition-branches-2"]["dependentTasks"] == ["open-run"]
    tasks = body_tasks(spec)
    assert set(tasks) == {
        "ingest", "heatmaps", *TRAINING_TASKS, "evaluate", "register", "condition-branches-3",
    }  # fmt: skip
    deps = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert deps["ingest"] == set()
    assert deps["heatmaps"] == {"ingest"}
    assert deps["pretrain"] == {"ingest", "heatmaps"}
    chain = ["pretrain", "train-stage", "train-stage-2", "train-stage-3", "train-stage-4"]
    for before, after in itertools.pairwise(chain):
        assert before in deps[after]
        assert tasks[after]["inputs"]["artifacts"]["init_model"]["taskOutputArtifact"] == {
            "outputArtifactKey": "model",
            "producerTask": before,
        }
    stages = [tasks[t]["inputs"]["parameters"]["stage"]["runtimeValue"]["constant"]
              for t in chain[1:]]  # fmt: skip
    assert stages == list(TRAIN_STAGES)
    assert "train-stage-4" in deps["evaluate"]
    assert {"evaluate", "train-stage-4"} <= deps["register"]
    assert {"evaluate", "register"} <= deps["condition-branches-3"]


def test_training_is_skipped_when_the_model_is_already_trained(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    branches = spec["components"]["comp-condition-branches-2"]["dag"]["tasks"]
    untrained = "inputs.parameter_values['pipelinechannel--open-run-trained_as'] == ''"
    assert branches["condition-6"]["triggerPolicy"]["condition"] == untrained
    assert branches["condition-7"]["triggerPolicy"]["condition"] == f"!({untrained})"
    assert set(spec["components"]["comp-condition-7"]["dag"]["tasks"]) == {"already-trained"}
    opened = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]["open-run"]
    assert opened["inputs"]["parameters"]["retrain"] == {
        "componentInputParameter": "pipelinechannel--retrain"
    }
    assert spec["root"]["inputDefinitions"]["parameters"]["retrain"]["defaultValue"] is False


def test_promotion_is_gated_on_the_floors(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    branches = spec["components"]["comp-condition-branches-3"]["dag"]["tasks"]
    conditions = {name: task["triggerPolicy"]["condition"] for name, task in branches.items()}
    assert set(conditions) == {"condition-4", "condition-5"}
    passed = "inputs.parameter_values['pipelinechannel--evaluate-passed_floors'] == true"
    assert conditions["condition-4"] == passed
    assert conditions["condition-5"] == f"!({passed})"
    assert set(spec["components"]["comp-condition-4"]["dag"]["tasks"]) == {"promote-challenger"}
    assert set(spec["components"]["comp-condition-5"]["dag"]["tasks"]) == {"reject-challenger"}


def test_exit_handler_closes_the_mlflow_run(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    close = spec["root"]["dag"]["tasks"]["close-run"]
    assert close["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert close["dependentTasks"] == ["exit-handler-1"]
    assert close["inputs"]["parameters"]["status"] == {
        "taskFinalStatus": {"producerTask": "exit-handler-1"}
    }
    assert close["inputs"]["parameters"]["pipeline_run_id"]["runtimeValue"]["constant"] == (
        "{{$.pipeline_job_uuid}}"
    )


def test_the_run_is_identified_by_the_job_uuid_and_labelled_by_its_name(
    ir: tuple[dict, dict],
) -> None:
    """A display name is not unique (two submits may share it): MLflow's parent run, the
    registration and the checkpoints key on the job's uuid."""
    spec, _ = ir
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    opened = handler["open-run"]["inputs"]["parameters"]
    assert opened["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    assert opened["pipeline_run_name"]["runtimeValue"]["constant"] == "{{$.pipeline_job_name}}"
    register = body_tasks(spec)["register"]["inputs"]["parameters"]
    assert register["pipeline_run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    text = yaml.safe_dump(spec)
    assert "{{$.pipeline_job_name}}" in text
    uses = [line for line in text.splitlines() if "pipeline_job_name" in line]
    assert len(uses) == 1, uses


def test_caching_only_for_pure_data_steps(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    tasks = body_tasks(spec)
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get(
        "enableCache")}  # fmt: skip
    assert cached == {"ingest", "heatmaps"}
    # The ingest cache key includes the content digest of the raw data.
    assert tasks["ingest"]["inputs"]["parameters"]["data_version"] == {
        "componentInputParameter": "pipelinechannel--open-run-data_version"
    }
    handler = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert handler["open-run"]["cachingOptions"] == {}
    for name in ("evaluate", "register", *TRAINING_TASKS):
        assert tasks[name]["cachingOptions"] == {}, name


def test_gpu_requests_and_kubernetes_settings(ir: tuple[dict, dict]) -> None:
    spec, platform = ir
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, ex in executors.items() if "accelerator" in ex["container"].get(
        "resources", {})}  # fmt: skip
    assert gpu == {f"exec-{t}" for t in TRAINING_TASKS}
    for name in gpu:
        resources = executors[name]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["resourceMemoryLimit"] == "32G"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in gpu:
        settings = k8s[name]
        # A deadline, and no GPU seen is an error: the variable comes from the pod's label
        # (downward API), which kfp.local does not apply.
        assert settings["activeDeadlineSeconds"] == str(24 * 3600)
        assert settings["podMetadata"]["labels"] == {GPU_LABEL: "true"}
        assert settings["fieldPathAsEnv"] == [
            {"name": REQUIRE_GPU_ENV, "fieldPath": f"metadata.labels['{GPU_LABEL}']"}
        ]
        assert settings["emptyDirMounts"] == [
            {"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "8Gi", "volumeName": "dshm"}
        ]
        assert settings["tolerations"] == [
            {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}
        ]
        # Checkpoints on a volume, its path from the ConfigMap: a retried pod resumes.
        assert [m["mountPath"] for m in settings["pvcMount"]] == ["/checkpoints"]
        assert settings["pvcMount"][0]["constant"] == "cxr-gaze-checkpoints"
        (env,) = settings["configMapAsEnv"]
        assert env["configMapName"] == "cxr-gaze-training"
        assert env["keyToEnv"] == [
            {"configMapKey": "checkpoint_root", "envVar": "CXRGAZE_CHECKPOINT_ROOT"}
        ]


def _retry_policies(spec: dict) -> dict[str, dict]:
    dag = body_tasks(spec)
    return {name: task["retryPolicy"] for name, task in dag.items() if "retryPolicy" in task}


def test_training_steps_retry_on_the_cluster_but_not_locally(
    ir: tuple[dict, dict], tmp_path: Path
) -> None:
    spec, _ = ir
    retried = _retry_policies(spec)
    assert set(retried) == set(TRAINING_TASKS)
    assert {p["maxRetryCount"] for p in retried.values()} == {2}
    local = tmp_path / "local.yaml"
    compile_pipeline(local, retries=0)
    assert _retry_policies(next(yaml.safe_load_all(local.read_text()))) == {}


def test_every_step_runs_the_project_image_without_installs(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    for name, executor in spec["deploymentSpec"]["executors"].items():
        container = executor["container"]
        assert container["image"] == DEFAULT_IMAGE, name
        assert "pip install" not in " ".join(container["command"]), name


def test_pipeline_parameters_have_defaults(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "raw_dir", "data_rev", "preset", "overrides", "promotion_policy", "tracking_uri",
        "data_remote", "retrain",
    }  # fmt: skip
    assert params["data_remote"]["defaultValue"] == ""
    assert "defaultValue" not in params["raw_dir"]
    assert params["preset"]["defaultValue"] == "demo"
    policy = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "mlflow" / "promotion.yaml").read_text()
    )
    assert params["promotion_policy"]["defaultValue"] == policy


def test_cli_compile_with_image(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["compile", "-o", str(out), "--image", "reg.io/x/cxr:1.2"])
    assert result.exit_code == 0, result.output
    spec, _ = yaml.safe_load_all(out.read_text(encoding="utf-8"))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {"reg.io/x/cxr:1.2"}


def test_gpus_per_training_step_are_fixed_at_compile_time(tmp_path: Path) -> None:
    spec, _ = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", gpus=4).read_text())
    counts = {
        name: ex["container"]["resources"]["accelerator"]["resourceCount"]
        for name, ex in spec["deploymentSpec"]["executors"].items()
        if "accelerator" in ex["container"].get("resources", {})
    }
    assert counts == {f"exec-{t}": "4" for t in TRAINING_TASKS}
    with pytest.raises(ValueError, match="at least 1"):
        compile_pipeline(tmp_path / "q.yaml", gpus=0)


def test_cli_compile_rejects_a_bad_image(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    result = CliRunner().invoke(app, ["compile", "-o", str(out), "--image", "Not An Image"])
    assert result.exit_code == 2
    assert "not a container image reference" in result.output
    assert not out.exists()


def _inputs(spec: dict, executor: str) -> set[str]:
    """Parameter and artifact input names of the component an executor runs."""
    component = spec["components"][f"comp-{executor.removeprefix('exec-')}"]
    definitions = component.get("inputDefinitions", {})
    return set(definitions.get("parameters", {})) | set(definitions.get("artifacts", {}))


def _secrets(platform: dict) -> dict[str, dict[str, tuple[list[str], bool]]]:
    """Per executor: {secret name: (environment variables, optional)}."""
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    return {
        name: {
            s["secretName"]: ([e["envVar"] for e in s["keyToEnv"]], s.get("optional", False))
            for s in settings.get("secretAsEnv", [])
        }
        for name, settings in k8s.items()
    }


def test_every_step_that_talks_to_mlflow_or_s3_gets_its_secret(ir: tuple[dict, dict]) -> None:
    """MLflow's address and credentials reach every step with a tracking_uri input; S3 keys
    (optional: runs without --data-remote need none) every step that reads data."""
    spec, platform = ir
    secrets = _secrets(platform)
    for executor in spec["deploymentSpec"]["executors"]:
        inputs = _inputs(spec, executor)
        got = secrets.get(executor, {})
        if "tracking_uri" in inputs:
            assert got.get("cxr-gaze-mlflow") == (list(MLFLOW_SECRET_KEYS), False), executor
        else:
            assert "cxr-gaze-mlflow" not in got, executor
        if inputs & {"store", "data_remote", "maps"}:
            assert got.get("cxr-gaze-s3") == (list(S3_SECRET_KEYS), True), executor
    assert len([e for e in secrets.values() if "cxr-gaze-mlflow" in e]) >= 8


def test_every_step_requests_cpu_and_memory(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    for name, executor in spec["deploymentSpec"]["executors"].items():
        resources = executor["container"].get("resources", {})
        assert {"resourceCpuRequest", "resourceMemoryRequest", "resourceMemoryLimit"} <= set(
            resources
        ), name


def test_no_credential_reaches_the_ir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials in the compiling machine's environment stay there: the IR names Secrets."""
    planted = {key: f"planted-{key.lower()}-7f3a" for key in (*MLFLOW_SECRET_KEYS, *S3_SECRET_KEYS)}
    for key, value in planted.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "p.yaml"
    args = [
        "--mlflow-secret",
        "team-mlflow",
        "--s3-secret",
        "team-s3",
        "--gpu-step-timeout",
        "7200",
    ]
    result = CliRunner().invoke(app, ["compile", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert not [v for v in planted.values() if v in text]
    _, platform = yaml.safe_load_all(text)
    names = {n for e in _secrets(platform).values() for n in e}
    assert names == {"team-mlflow", "team-s3"}
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {s.get("activeDeadlineSeconds") for s in k8s.values()} >= {"7200"}


def test_cluster_options_are_checked() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes object name"):
        ClusterOptions(mlflow_secret="Team_MLflow")
    with pytest.raises(ValueError, match="at least 60"):
        ClusterOptions(gpu_step_timeout_s=5)
