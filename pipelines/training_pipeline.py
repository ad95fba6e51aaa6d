"""The training pipeline: raw release -> packed store -> gaze maps -> stages 1a, 1b, 2, 3, 3' ->
test evaluation -> registered version -> promotion gate.

::

    open_run ─ ingest ─ heatmaps ─ pretrain (1a) ─ train 1b ─ train 2 ─ train 3 ─ train 3'
                                                                                      │
                          promote (floors passed) | reject (floors missed) ─ register ─ evaluate

All of it runs inside an exit handler whose task closes the pipeline's MLflow run: FINISHED, or
FAILED when any step failed.

Bulk data: with ``data_remote`` (``s3://bucket/prefix``) the store and the maps go to the object
store once and the artifacts between steps are pointers (:mod:`components.data_transfer`); by
default they are the folders themselves.

Caching: ingest and heatmaps are pure functions of the raw data's content (``data_version``, a
digest computed by ``open_run``, which itself never caches) and of the preset, so a rerun on
unchanged data reuses them and a run on new data never does. Training, evaluation,
registration and promotion write to MLflow and are never served from cache.

On Kubernetes the training steps ask for NVIDIA GPUs (one by default; see
``make_training_pipeline`` for more, a step then trains data-parallel under torchrun), tolerate
GPU-node taints, get a memory-backed ``/dev/shm``, fail at once when torch sees no GPU and stop
at a deadline. Every step requests CPU and memory. Steps that talk to MLflow get its address
and credentials from a Secret, steps that may read the object store get S3 keys from another
(names in :class:`ClusterOptions`); nothing secret is a parameter. kfp.local ignores these
settings.
"""

# No postponed annotations here: kfp reads the pipeline's parameter types from them.
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kfp import dsl, kubernetes

from components.already_trained import already_trained
from components.evaluate import evaluate
from components.heatmaps import heatmaps
from components.ingest import ingest
from components.pretrain import pretrain
from components.promote import load_policy, promote_challenger, reject_challenger
from components.register import register
from components.tracking import close_run, open_run
from components.train_stage import CHECKPOINT_ROOT_ENV, REQUIRE_GPU_ENV, train_stage

PIPELINE_NAME = "cxr-gaze-training"
POLICY_FILE = Path("mlflow") / "promotion.yaml"
"""Relative to the checkout (or the image's /app): beside this package, else the working folder."""
TRAIN_STAGES = ("s1b", "s2", "s3", "s3j")
"""The stages after pretraining, in order; a stage the preset disables passes weights on."""

GPU_RESOURCE = "nvidia.com/gpu"
GPU_LABEL = "cxr-gaze.io/requires-gpu"
TRAINING_CPU, TRAINING_MEMORY, TRAINING_MEMORY_LIMIT = "4", "16G", "32G"
SHM_SIZE = "8Gi"
CHECKPOINT_PVC, CHECKPOINT_MOUNT = "cxr-gaze-checkpoints", "/checkpoints"
TRAINING_CONFIG_MAP = "cxr-gaze-training"
"""On the cluster, checkpoints live on a volume (k8s/base/training.yaml) whose path reaches the
step through the ConfigMap, so a retried pod resumes where the killed one stopped."""


MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
"""Each key of the Secret becomes the environment variable of the same name in the step."""
STEP_CPU, STEP_MEMORY, STEP_MEMORY_LIMIT = "1", "2G", "4G"
DATA_CPU, DATA_MEMORY, DATA_MEMORY_LIMIT = "2", "8G", "16G"
"""Requests of the light steps (MLflow and registry calls) and of the data steps (ingest, gaze
maps, evaluation and the promotion gate hold a split of images in memory)."""


_OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
"""A Kubernetes object name (RFC 1123 subdomain)."""


@dataclass(frozen=True)
class ClusterOptions:
    """Compile-time settings for the cluster (``cxrgaze compile --mlflow-secret ...``).

    ``mlflow_secret`` (required in the run's namespace) holds :data:`MLFLOW_SECRET_KEYS`: the
    tracking URI the steps use when the ``tracking_uri`` parameter is empty, and the basic-auth
    credentials of the MLflow proxy. ``s3_secret`` holds :data:`S3_SECRET_KEYS` for the object
    store (``data_remote``, ``s3://`` weights); it is optional, as runs that keep their data in
    KFP artifacts need none. ``gpu_step_timeout_s`` is the deadline of each training pod.
    """

    mlflow_secret: str = "cxr-gaze-mlflow"
    s3_secret: str = "cxr-gaze-s3"
    gpu_step_timeout_s: int = 24 * 3600

    def __post_init__(self) -> None:
        for name in (self.mlflow_secret, self.s3_secret):
            if not _OBJECT_NAME.fullmatch(name):
                raise ValueError(f"secret name {name!r} is not a Kubernetes object name")
        if self.gpu_step_timeout_s < 60:
            raise ValueError(
                f"gpu_step_timeout_s must be at least 60, got {self.gpu_step_timeout_s}"
            )


def with_secrets(
    task: dsl.PipelineTask, options: ClusterOptions, *, mlflow: bool = True, s3: bool = False
) -> dsl.PipelineTask:
    """Environment from the run's Secrets: MLflow's address and credentials, S3 keys."""
    if mlflow:
        kubernetes.use_secret_as_env(
            task, options.mlflow_secret, {key: key for key in MLFLOW_SECRET_KEYS}
        )
    if s3:
        kubernetes.use_secret_as_env(
            task, options.s3_secret, {key: key for key in S3_SECRET_KEYS}, optional=True
        )
    return task


def sized(task: dsl.PipelineTask, data: bool = False) -> dsl.PipelineTask:
    """CPU and memory requests (and a memory limit) for a step that trains nothing."""
    cpu, memory, limit = (DATA_CPU, DATA_MEMORY, DATA_MEMORY_LIMIT) if data else (
        STEP_CPU, STEP_MEMORY, STEP_MEMORY_LIMIT)  # fmt: skip
    return task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(limit)


def default_policy() -> dict:
    """The promotion policy of the checkout (``mlflow/promotion.yaml``), as plain data."""
    beside = Path(__file__).resolve().parents[1] / POLICY_FILE
    return load_policy(beside if beside.is_file() else POLICY_FILE).model_dump(mode="json")


def on_gpu_node(
    task: dsl.PipelineTask, gpus: int, retries: int, options: ClusterOptions
) -> dsl.PipelineTask:
    """Training resources: ``gpus`` GPUs (more than one trains data-parallel under torchrun),
    CPU and memory for the loader, a memory-backed /dev/shm (PyTorch shares batches through
    it), scheduling onto tainted GPU nodes, ``retries`` retries that resume from the
    checkpoint volume, a deadline, and a step that fails at once when torch sees no GPU (a
    node whose driver is too old for the image's CUDA would otherwise train on the CPU for
    days). kfp.local ignores the Kubernetes settings (it keeps checkpoints in the system temp
    folder)."""
    # Through the pod's own label (downward API), not a container variable: kfp.local applies
    # container variables, and a laptop run must still train on the CPU.
    kubernetes.add_pod_label(task, GPU_LABEL, "true")
    kubernetes.use_field_path_as_env(task, REQUIRE_GPU_ENV, f"metadata.labels['{GPU_LABEL}']")
    kubernetes.set_timeout(task, options.gpu_step_timeout_s)
    with_secrets(task, options, s3=True)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
    kubernetes.mount_pvc(task, pvc_name=CHECKPOINT_PVC, mount_path=CHECKPOINT_MOUNT)
    kubernetes.use_config_map_as_env(
        task, TRAINING_CONFIG_MAP, {"checkpoint_root": CHECKPOINT_ROOT_ENV}
    )
    task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
    task.set_cpu_request(TRAINING_CPU).set_memory_request(TRAINING_MEMORY)
    task.set_memory_limit(TRAINING_MEMORY_LIMIT)
    kubernetes.empty_dir_mount(
        task,
        volume_name="dshm",
        mount_path="/dev/shm",  # nosec B108  # the pod memory volume, not a host temp dir
        medium="Memory",
        size_limit=SHM_SIZE,
    )
    kubernetes.add_toleration(task, key=GPU_RESOURCE, operator="Exists", effect="NoSchedule")
    return task


def make_training_pipeline(
    gpus: int = 1, retries: int = 0, options: ClusterOptions | None = None
) -> Callable:
    """The pipeline with ``gpus`` GPUs per training step (more than one trains data-parallel
    under torchrun), ``retries`` retries of a failed training step (the cluster's pods get
    evicted or killed; a local failure is a bug to see at once) and the cluster ``options``
    (Secret names, deadlines). All are fixed when the pipeline is built: kfp.local cannot
    resolve a GPU count given as a run parameter inside the exit handler's DAG."""
    options = options or ClusterOptions()
    if gpus < 1:
        raise ValueError(f"gpus must be at least 1, got {gpus}")
    if retries < 0:
        raise ValueError(f"retries must be at least 0, got {retries}")

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Dual-encoder multi-task UNet for chest X-ray diagnosis and radiologist gaze: "
        "ingest, gaze maps, cooperative training, evaluation, registration, promotion.",
    )
    def training_pipeline(
        raw_dir: str,
        data_rev: str = "workspace",
        preset: str = "demo",
        overrides: list = [],  # noqa: B006 (a pipeline parameter's default, never mutated)
        promotion_policy: dict = default_policy(),  # noqa: B008 (read once, at definition)
        tracking_uri: str = "",
        data_remote: str = "",
        retrain: bool = False,
    ):
        # The job's uuid identifies the run (MLflow parent run, registration, checkpoints); its
        # display name is only a label: two submits may share one.
        run_uuid = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        closing = close_run(tracking_uri=tracking_uri, pipeline_run_id=run_uuid)
        closing.set_caching_options(False).set_display_name("close MLflow run")
        sized(with_secrets(closing, options))
        with dsl.ExitHandler(closing, name="tracked-run"):
            opened = open_run(
                raw_dir=raw_dir,
                data_rev=data_rev,
                preset=preset,
                overrides=overrides,
                tracking_uri=tracking_uri,
                pipeline_run_id=run_uuid,
                pipeline_run_name=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                retrain=retrain,
            ).set_caching_options(False)
            sized(with_secrets(opened, options))
            run_id = opened.outputs["run_id"]
            # Same data content, clean code commit, preset and overrides as a registered version:
            # nothing to train (the run records which version it found); retrain=True forces.
            # (The Else branch also lets kfp.local resolve the condition: a lone If on a task
            # output directly inside the exit handler is not resolved there.)
            with dsl.If(opened.outputs["trained_as"] == "", name="not-trained-yet"):
                packed = ingest(
                    raw_dir=raw_dir,
                    data_version=opened.outputs["data_version"],
                    preset=preset,
                    overrides=overrides,
                    data_remote=data_remote,
                ).set_caching_options(True)
                sized(with_secrets(packed, options, mlflow=False, s3=True), data=True)
                store = packed.outputs["store"]
                maps = heatmaps(
                    store=store, preset=preset, overrides=overrides, data_remote=data_remote
                )
                maps.set_caching_options(True)
                sized(with_secrets(maps, options, mlflow=False, s3=True), data=True)
                gaze = maps.outputs["maps"]
                stage = on_gpu_node(
                    pretrain(
                        preset=preset,
                        overrides=overrides,
                        store=store,
                        maps=gaze,
                        tracking_uri=tracking_uri,
                        parent_run_id=run_id,
                    ),
                    gpus,
                    retries,
                    options,
                )
                stage.set_caching_options(False).set_display_name("train s1a (contrastive)")
                for name in TRAIN_STAGES:
                    stage = on_gpu_node(
                        train_stage(
                            stage=name,
                            preset=preset,
                            overrides=overrides,
                            store=store,
                            maps=gaze,
                            init_model=stage.outputs["model"],
                            tracking_uri=tracking_uri,
                            parent_run_id=run_id,
                        ),
                        gpus,
                        retries,
                        options,
                    )
                    stage.set_caching_options(False).set_display_name(f"train {name}")
                scored = evaluate(
                    preset=preset,
                    overrides=overrides,
                    store=store,
                    maps=gaze,
                    model=stage.outputs["model"],
                    promotion_policy=promotion_policy,
                    tracking_uri=tracking_uri,
                    parent_run_id=run_id,
                ).set_caching_options(False)
                sized(with_secrets(scored, options, s3=True), data=True)
                registered = register(
                    model=stage.outputs["model"],
                    summary=scored.outputs["summary"],
                    preset=preset,
                    overrides=overrides,
                    data_rev=data_rev,
                    data_md5=packed.outputs["data_md5"],
                    pipeline_run_id=run_uuid,
                    tracking_uri=tracking_uri,
                    parent_run_id=run_id,
                ).set_caching_options(False)
                sized(with_secrets(registered, options))
                version = registered.outputs["version"]
                with dsl.If(scored.outputs["passed_floors"] == True, name="floors-passed"):  # noqa: E712
                    promoted = promote_challenger(
                        store=store,
                        maps=gaze,
                        version=version,
                        promotion_policy=promotion_policy,
                        tracking_uri=tracking_uri,
                        parent_run_id=run_id,
                    ).set_caching_options(False)
                    sized(with_secrets(promoted, options, s3=True), data=True)
                with dsl.Else(name="floors-missed"):
                    rejected = reject_challenger(
                        version=version,
                        floor_reasons=scored.outputs["floor_reasons"],
                        tracking_uri=tracking_uri,
                        parent_run_id=run_id,
                    ).set_caching_options(False)
                    sized(with_secrets(rejected, options))
            with dsl.Else(name="already-trained"):
                done = already_trained(trained_as=opened.outputs["trained_as"])
                sized(done.set_caching_options(False))

    return training_pipeline


training_pipeline = make_training_pipeline()
