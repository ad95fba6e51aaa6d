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
GPU-node taints and get a memory-backed ``/dev/shm``; kfp.local ignores these settings.
"""

# No postponed annotations here: kfp reads the pipeline's parameter types from them.
from collections.abc import Callable
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
from components.train_stage import CHECKPOINT_ROOT_ENV, train_stage

PIPELINE_NAME = "cxr-gaze-training"
POLICY_FILE = Path("mlflow") / "promotion.yaml"
"""Relative to the checkout (or the image's /app): beside this package, else the working folder."""
TRAIN_STAGES = ("s1b", "s2", "s3", "s3j")
"""The stages after pretraining, in order; a stage the preset disables passes weights on."""

GPU_RESOURCE = "nvidia.com/gpu"
TRAINING_CPU, TRAINING_MEMORY, TRAINING_MEMORY_LIMIT = "4", "16G", "32G"
SHM_SIZE = "8Gi"
CHECKPOINT_PVC, CHECKPOINT_MOUNT = "cxr-gaze-checkpoints", "/checkpoints"
TRAINING_CONFIG_MAP = "cxr-gaze-training"
"""On the cluster, checkpoints live on a volume (k8s/base/training.yaml) whose path reaches the
step through the ConfigMap, so a retried pod resumes where the killed one stopped."""


def default_policy() -> dict:
    """The promotion policy of the checkout (``mlflow/promotion.yaml``), as plain data."""
    beside = Path(__file__).resolve().parents[1] / POLICY_FILE
    return load_policy(beside if beside.is_file() else POLICY_FILE).model_dump(mode="json")


def on_gpu_node(task: dsl.PipelineTask, gpus: int, retries: int) -> dsl.PipelineTask:
    """Training resources: ``gpus`` GPUs (more than one trains data-parallel under torchrun),
    CPU and memory for the loader, a memory-backed /dev/shm (PyTorch shares batches through
    it), scheduling onto tainted GPU nodes, and ``retries`` retries that resume from the
    checkpoint volume. kfp.local ignores the Kubernetes settings (it keeps checkpoints in the
    system temp folder)."""
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


def make_training_pipeline(gpus: int = 1, retries: int = 0) -> Callable:
    """The pipeline with ``gpus`` GPUs per training step (more than one trains data-parallel
    under torchrun) and ``retries`` retries of a failed training step (the cluster's pods get
    evicted or killed; a local failure is a bug to see at once). Both are fixed when the
    pipeline is built: kfp.local cannot resolve a GPU count given as a run parameter inside the
    exit handler's DAG."""
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
        run_name = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
        closing = close_run(tracking_uri=tracking_uri, pipeline_run_id=run_name)
        closing.set_caching_options(False).set_display_name("close MLflow run")
        with dsl.ExitHandler(closing, name="tracked-run"):
            opened = open_run(
                raw_dir=raw_dir,
                data_rev=data_rev,
                preset=preset,
                overrides=overrides,
                tracking_uri=tracking_uri,
                pipeline_run_id=run_name,
                retrain=retrain,
            ).set_caching_options(False)
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
                store = packed.outputs["store"]
                maps = heatmaps(
                    store=store, preset=preset, overrides=overrides, data_remote=data_remote
                )
                maps.set_caching_options(True)
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
                registered = register(
                    model=stage.outputs["model"],
                    summary=scored.outputs["summary"],
                    preset=preset,
                    overrides=overrides,
                    data_rev=data_rev,
                    data_md5=packed.outputs["data_md5"],
                    pipeline_run_id=run_name,
                    tracking_uri=tracking_uri,
                    parent_run_id=run_id,
                ).set_caching_options(False)
                version = registered.outputs["version"]
                with dsl.If(scored.outputs["passed_floors"] == True, name="floors-passed"):  # noqa: E712
                    promote_challenger(
                        store=store,
                        maps=gaze,
                        version=version,
                        promotion_policy=promotion_policy,
                        tracking_uri=tracking_uri,
                        parent_run_id=run_id,
                    ).set_caching_options(False)
                with dsl.Else(name="floors-missed"):
                    reject_challenger(
                        version=version,
                        floor_reasons=scored.outputs["floor_reasons"],
                        tracking_uri=tracking_uri,
                        parent_run_id=run_id,
                    ).set_caching_options(False)
            with dsl.Else(name="already-trained"):
                already_trained(trained_as=opened.outputs["trained_as"]).set_caching_options(False)

    return training_pipeline


training_pipeline = make_training_pipeline()
