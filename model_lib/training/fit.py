"""Training one stage.

:func:`fit_stage` trains the submodules a :class:`StageSpec` names with everything else frozen,
keeps the checkpoint with the lowest validation loss, and resumes exactly from its last
checkpoint after an interruption. It returns a :class:`FitResult` and logs nothing: a caller
watches through callbacks, and a tqdm bar shows progress.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from model_lib.training.callbacks import Callback
from model_lib.training.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from model_lib.training.distributed import (
    DistributedStage,
    all_reduce_sum,
    barrier,
    broadcast_metrics,
    is_distributed,
    is_main_process,
    shard_loader,
)
from model_lib.training.evaluate import stage_val_loss
from model_lib.training.precision import PrecisionName, PrecisionPlan, resolve_precision
from model_lib.training.stages import (
    StageSpec,
    frozen_parts,
    make_stage_module,
    stage_loss,
    stage_outputs,
)

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
StopReason = Literal["max_epochs", "early_stopping", "lr_below_min", "non_finite_loss"]
# Fields a resumed run may change: raising the epoch cap continues a finished stage.
_RESUMABLE_CHANGES = frozenset({"max_epochs"})


class Loader(Protocol):
    """What a stage trains from: batches as :class:`~model_lib.data.loader.BatchLoader` yields
    them (``image``, ``saliency``, ``label``, ``index``), reshuffled reproducibly per epoch."""

    def __iter__(self) -> Iterator[dict[str, Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class FitResult:
    """What a stage produced.

    ``history[e]`` holds epoch e's metrics (see :meth:`Callback.on_epoch_end`);
    ``final_metrics`` are those of ``best_epoch``, whose weights the model holds on return and
    ``best_checkpoint`` stores.
    """

    stage: str
    history: list[dict[str, float]]
    best_checkpoint: Path
    best_epoch: int
    final_metrics: dict[str, float]
    stopped_reason: StopReason


@dataclass
class _Progress:
    """Where a stage stands: its epochs so far and the early-stopping state."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped: StopReason | None = None

    @property
    def next_epoch(self) -> int:
        return len(self.history)


class _StageRun:
    """The model prepared for one stage, with the optimiser state that goes with it; under a
    process group, its forward pass wrapped for data-parallel training (``ddp``)."""

    def __init__(self, model: nn.Module, spec: StageSpec, plan: PrecisionPlan, seed: int) -> None:
        frozen = frozen_parts(model, spec)
        self.model = plan.place(model)
        self.spec = spec
        self.plan = plan
        self.frozen = [model.get_submodule(name) for name in frozen]
        self.stage_module = make_stage_module(spec, model)
        params = [p for name in spec.trains for p in model.get_submodule(name).parameters()]
        if self.stage_module is not None:
            plan.place(self.stage_module)
            params += list(self.stage_module.parameters())
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(params, lr=spec.lr, weight_decay=0.0)
        # eps=0: with the default 1e-8 the drop from 1e-8 to 1e-9 is ignored, so the LR would
        # never fall below min_lr and stop training.
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=spec.lr_factor, patience=spec.lr_patience, eps=0.0
        )
        self.scaler = torch.amp.GradScaler(plan.device.type, enabled=plan.grad_scaler)
        self.ddp = (
            DistributedStage(model, spec, self.stage_module, plan.device, seed)
            if is_distributed()
            else None
        )

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def losses(self, images: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The batch's loss, and what to backpropagate (the same tensor unless distributed)."""
        if self.ddp is not None:
            return self.ddp(images, targets)
        outputs = stage_outputs(self.model, self.spec, images)
        loss = stage_loss(self.spec, outputs, targets, self.stage_module)
        return loss, loss

    def train_mode(self) -> None:
        """Train mode, except the frozen parts, whose batch-norm statistics stay fixed unless
        the stage asks for the authors' ``frozen_batchnorm="train"``."""
        self.model.train()
        if self.spec.frozen_batchnorm == "eval":
            for module in self.frozen:
                module.eval()
        if self.stage_module is not None:
            self.stage_module.train()

    def state(self) -> dict[str, Any]:
        return {
            "stage": self.spec.name,
            "spec": self.spec.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "stage_module": None if self.stage_module is None else self.stage_module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_weights(self, payload: dict[str, Any]) -> None:
        self.model.load_state_dict(payload["model"])
        if self.stage_module is not None:
            self.stage_module.load_state_dict(payload["stage_module"])

    def load(self, payload: dict[str, Any]) -> None:
        self.load_weights(payload)
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])

    def reload_best(self, path: Path) -> None:
        """Back to the best weights and their optimiser moments, keeping the current LR."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        payload = load_checkpoint(path, map_location=self.plan.device)
        self.load_weights(payload)
        self.optimizer.load_state_dict(payload["optimizer"])
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr


def _train_epoch(run: _StageRun, loader: Loader, progress: bool) -> float:
    """One pass over ``loader``; the mean training loss over images."""
    run.train_mode()
    device = run.plan.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in tqdm(loader, total=len(loader), leave=False, disable=not progress, unit="batch"):
        targets = {k: batch[k].to(device, non_blocking=True) for k in ("label", "saliency")}
        with run.plan.autocast():
            loss, objective = run.losses(run.plan.images(batch["image"]), targets)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(objective).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        total += loss.detach().double() * len(batch["label"])
        count += len(batch["label"])
    total, count = all_reduce_sum(total, count)
    if count == 0:
        raise ValueError(f"stage {run.spec.name}: the training loader yielded no batch")
    return float(total) / count


def _stop_reason(spec: StageSpec, val_loss: float, lr: float, prog: _Progress) -> StopReason | None:
    if not math.isfinite(val_loss):
        return "non_finite_loss"
    if lr < spec.min_lr:
        return "lr_below_min"
    if prog.bad_epochs >= spec.early_stopping_patience:
        return "early_stopping"
    if prog.next_epoch >= spec.max_epochs:
        return "max_epochs"
    return None


def _write(path: Path, payload: dict[str, Any]) -> None:
    """Rank 0 writes (every rank holds the same state); the others wait until it has."""
    if is_main_process():
        save_checkpoint(path, payload)
    barrier()


def _save_last(path: Path, run: _StageRun, prog: _Progress) -> None:
    _write(path, {**run.state(), "progress": asdict(prog), "rng": rng_state()})


def _resume(path: Path, run: _StageRun) -> _Progress:
    """Restore a stage from its ``last.pt``: weights, optimiser, scheduler, RNG, progress."""
    payload = load_checkpoint(path, run.plan.device)
    keep = {k: v for k, v in payload["spec"].items() if k not in _RESUMABLE_CHANGES}
    want = {
        k: v for k, v in run.spec.model_dump(mode="json").items() if k not in _RESUMABLE_CHANGES
    }
    if keep != want:
        changed = sorted(k for k in keep.keys() | want.keys() if keep.get(k) != want.get(k))
        raise ValueError(
            f"{path}: checkpoint of a different stage spec (fields {changed} differ); "
            "pass resume=False to start the stage afresh"
        )
    run.load(payload)
    set_rng_state(payload["rng"])
    prog = _Progress(**payload["progress"])
    if prog.stopped == "max_epochs" and prog.next_epoch < run.spec.max_epochs:
        prog.stopped = None
    logger.debug("stage %s: resuming at epoch %d from %s", run.spec.name, prog.next_epoch, path)
    return prog


def _train(
    run: _StageRun,
    prog: _Progress,
    loaders: tuple[Loader, Loader],
    checkpoint_dir: Path,
    callbacks: Sequence[Callback],
    progress: bool,
) -> None:
    """Run epochs until a stop reason, checkpointing each; updates ``prog`` in place."""
    spec = run.spec
    train_loader, val_loader = loaders
    bar = tqdm(
        total=spec.max_epochs,
        initial=prog.next_epoch,
        desc=f"stage {spec.name}",
        unit="epoch",
        disable=not progress,
    )
    while prog.stopped is None and prog.next_epoch < spec.max_epochs:
        epoch, lr = prog.next_epoch, run.lr
        train_loader.set_epoch(epoch)
        if run.ddp is not None:
            run.ddp.set_epoch(epoch)
        metrics = {"train_loss": _train_epoch(run, train_loader, progress)}
        # Every rank validates on the whole split; rank 0's numbers decide for all.
        val = stage_val_loss(
            run.model, spec, val_loader, stage_module=run.stage_module, precision=run.plan
        )
        metrics.update(broadcast_metrics(val))
        metrics["lr"] = lr
        val_loss = metrics["val_loss"]
        if math.isfinite(val_loss) and val_loss < prog.best_loss:
            prog.best_loss, prog.best_epoch, prog.bad_epochs = val_loss, epoch, 0
            best = {**run.state(), "epoch": epoch, "metrics": metrics}
            _write(checkpoint_dir / BEST_CHECKPOINT, best)
        else:
            prog.bad_epochs += 1
        run.scheduler.step(val_loss)
        if run.lr < lr and prog.best_epoch >= 0:
            run.reload_best(checkpoint_dir / BEST_CHECKPOINT)
        prog.history.append(metrics)
        prog.stopped = _stop_reason(spec, val_loss, run.lr, prog)
        _save_last(checkpoint_dir / LAST_CHECKPOINT, run, prog)
        bar.update(1)
        bar.set_postfix(train=f"{metrics['train_loss']:.4g}", val=f"{val_loss:.4g}", lr=lr)
        for callback in callbacks:
            callback.on_epoch_end(spec.name, epoch, metrics)
    bar.close()
    if prog.stopped is None:
        # Resumed with an epoch cap lowered below the epochs already run.
        prog.stopped = "max_epochs"
        _save_last(checkpoint_dir / LAST_CHECKPOINT, run, prog)


def fit_stage(
    model: nn.Module,
    spec: StageSpec,
    train_loader: Loader,
    val_loader: Loader,
    *,
    checkpoint_dir: Path,
    device: torch.device | str = "cpu",
    callbacks: Sequence[Callback] = (),
    resume: bool = True,
    progress: bool = True,
    precision: PrecisionName = "auto",
    seed: int = 0,
) -> FitResult:
    """Train one stage; on return ``model`` (on ``device``, in eval mode) holds its best weights.

    Adam (``spec.lr``, no weight decay) over the parameters of ``spec.trains`` and of the stage's
    own module (SupCon projection head, joint-loss uncertainty); the other submodules get
    ``requires_grad=False`` and stay in eval mode. After each epoch: validation loss and metrics,
    ``best.pt`` when the validation loss is the lowest so far, ReduceLROnPlateau (reloading
    ``best.pt``'s weights and optimiser moments when it drops the LR), ``last.pt``, then the
    callbacks. Stops at ``max_epochs``, on early stopping, once the LR is below ``min_lr``, or on
    a non-finite validation loss.

    With ``resume`` and a ``last.pt`` in ``checkpoint_dir``, training goes on from the epoch
    after it with the saved model, optimiser, scheduler, early-stopping and random states, so an
    interrupted run ends as an uninterrupted one would; a stage that had finished only reloads
    its best weights (and calls no callback). Otherwise the stage starts afresh, seeded with
    ``seed``; its first ``last.pt`` holds the starting weights, so a kill in the first epoch
    resumes from them too.

    Under an initialised process group (a ``torchrun`` launch) the stage trains data-parallel,
    as :mod:`model_lib.training.distributed` describes: ``train_loader`` (a
    :class:`~model_lib.data.loader.BatchLoader`) is sharded over the ranks, rank 0 alone writes
    checkpoints and calls the callbacks, and every rank returns the same result.

    Raises:
        ValueError: ``spec.trains`` names a missing submodule, a loader is empty, or ``last.pt``
            belongs to a different spec; distributed, the batch size does not split evenly
            over the ranks.
        TypeError: distributed, with a training loader that cannot be sharded.
        FloatingPointError: no epoch had a finite validation loss, so there is nothing to keep.
    """
    plan = resolve_precision(precision, device)
    checkpoint_dir = Path(checkpoint_dir)
    last_path = checkpoint_dir / LAST_CHECKPOINT
    best_path = checkpoint_dir / BEST_CHECKPOINT
    resuming = resume and last_path.is_file()
    if is_distributed():
        barrier()  # every rank has looked for last.pt before rank 0 writes one
        train_loader = shard_loader(train_loader, spec.name)
        callbacks, progress = (callbacks, progress) if is_main_process() else ((), False)
    if not resuming:
        # Before the stage module is built, so that its initialisation is seeded too.
        seed_everything(seed)
    run = _StageRun(model, spec, plan, seed)
    if resuming:
        prog = _resume(last_path, run)
    else:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        best_path.unlink(missing_ok=True)
        prog = _Progress()
        _save_last(last_path, run, prog)

    trained_now = prog.stopped is None
    if trained_now:
        for callback in callbacks:
            callback.on_stage_start(spec, prog.next_epoch)
        _train(run, prog, (train_loader, val_loader), checkpoint_dir, callbacks, progress)
    if prog.best_epoch < 0:
        raise FloatingPointError(
            f"stage {spec.name}: no epoch had a finite validation loss ({last_path}); "
            "nothing to keep"
        )
    run.load_weights(load_checkpoint(best_path, plan.device))
    model.requires_grad_(True)
    model.eval()
    result = FitResult(
        stage=spec.name,
        history=prog.history,
        best_checkpoint=best_path,
        best_epoch=prog.best_epoch,
        final_metrics=prog.history[prog.best_epoch],
        stopped_reason=prog.stopped,
    )
    if trained_now:
        for callback in callbacks:
            callback.on_stage_end(result)
    return result
