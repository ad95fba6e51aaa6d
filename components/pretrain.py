"""Pretrain step: stage 1a, supervised contrastive (triplet) learning of the DenseNet branch from
the seeded initialisation (or the pretrained weights the preset names), tracked like every
training stage (see :mod:`components.train_stage`)."""

from __future__ import annotations

from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.kfp_step import step_component

PRETRAIN_STAGE = "s1a"


@step_component
def pretrain(
    preset: str,
    overrides: list,
    store: Input[Dataset],
    maps: Input[Dataset],
    tracking_uri: str,
    parent_run_id: str,
    model: Output[Model],
    metrics: Output[Metrics],
):
    """Stage 1a: contrastive pretraining of the DenseNet encoder."""
    from components.pretrain import PRETRAIN_STAGE
    from components.train_stage import publish_stage, train_stage_step

    outcome = train_stage_step(
        PRETRAIN_STAGE,
        preset,
        overrides,
        store.path,
        maps.path,
        model.path,
        init_weights=None,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    publish_stage(outcome, model, metrics, preset)
