"""The chain of stages: each trained from the best weights of the one before."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.training.callbacks import Callback
from model_lib.training.fit import FitResult, Loader, fit_stage
from model_lib.training.precision import PrecisionName
from model_lib.training.stages import StageSpec

LoaderFactory = Callable[[StageSpec], tuple[Loader, Loader]]
"""Makes a stage's (train, validation) loaders, at the stage's batch size."""


def split_loaders(train: SplitArrays, val: SplitArrays, *, seed: int = 0) -> LoaderFactory:
    """Loaders over two splits at each stage's batch size; training batches are shuffled
    reproducibly (epoch e draws with ``seed + e``) unless the stage says not to, validation
    ones come in split order."""

    def make(spec: StageSpec) -> tuple[Loader, Loader]:
        return (
            BatchLoader(train, spec.batch_size, shuffle=spec.shuffle, seed=seed),
            BatchLoader(val, spec.batch_size),
        )

    return make


def run_stages(
    model: nn.Module,
    specs: Sequence[StageSpec],
    loaders: LoaderFactory,
    *,
    checkpoint_dir: Path,
    device: torch.device | str = "cpu",
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
    progress: bool = True,
    precision: PrecisionName = "auto",
    seed: int = 0,
) -> dict[str, FitResult]:
    """Fit the enabled stages in order, each from the previous one's best weights.

    Stage ``s`` checkpoints under ``checkpoint_dir / s.name``. On resume, stages that had
    finished only reload their best weights, so a killed chain goes on where it stopped.

    Returns:
        ``{stage name: FitResult}`` in training order.
    """
    results: dict[str, FitResult] = {}
    for spec in specs:
        if not spec.enabled:
            continue
        results[spec.name] = fit_stage(
            model,
            spec,
            *loaders(spec),
            checkpoint_dir=Path(checkpoint_dir) / spec.name,
            device=device,
            callbacks=callbacks,
            resume=resume,
            progress=progress,
            precision=precision,
            seed=seed,
        )
    return results
