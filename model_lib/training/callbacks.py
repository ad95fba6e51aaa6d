"""Callbacks: how a caller watches training (MLflow logging, say) without training knowing it.

Subclass :class:`Callback` and override what you need; the others do nothing. Any object with
these three methods works too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from model_lib.training.fit import FitResult
    from model_lib.training.stages import StageSpec


class Callback(Protocol):
    """Hooks :func:`~model_lib.training.fit.fit_stage` calls.

    ``on_epoch_end`` runs after the epoch's checkpoint is written, so an exception raised in it
    interrupts training without losing the epoch; a resumed run goes on with the next one.
    A stage found already finished on resume calls none of the hooks.
    """

    def on_stage_start(self, spec: StageSpec, start_epoch: int) -> None:
        """Before the first epoch trained in this call (``start_epoch`` > 0 on resume)."""

    def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch (0-based) with its metrics: ``train_loss``, ``val_loss``, ``lr``,
        and the stage's validation metrics (``val_accuracy``, ``val_auc_macro``,
        ``val_auc_micro``, ``val_cc``, ``sigma_c``)."""

    def on_stage_end(self, result: FitResult) -> None:
        """After the stage stopped and its best weights were loaded back."""
