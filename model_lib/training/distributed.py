"""Data-parallel training over processes: one DistributedDataParallel replica per rank.

Opt-in: :func:`~model_lib.training.fit.fit_stage` trains distributed only when a process group
is initialised (by :func:`init_distributed` in a process ``torchrun`` started); otherwise none
of this runs. Under DDP, one optimiser step over a global batch of B images equals one
single-process step over the same B images:

- **Same batches.** Every rank draws the epoch's global shuffled order (``seed + epoch``) and
  takes a disjoint slice of each global batch of ``spec.batch_size`` images (B / world_size
  each; see :meth:`~model_lib.data.loader.BatchLoader.shard`).
- **Same loss.** The stage losses are means over the batch. DDP averages gradients over ranks,
  so each rank backpropagates its mean loss scaled by ``n_rank * world / n_global`` (1 for
  full batches; it matters for a short last batch split unevenly): the average of the scaled
  means is the mean over the global batch. A rank left without images by a last batch
  smaller than the world still takes the step and adds nothing. The contrastive losses of
  stage 1a (triplet, SupCon) compare every pair of the batch, so they are not a mean of
  per-image terms: there every rank gathers the global batch's embeddings and labels and
  computes the loss of the whole batch (gradients flow back through the gather).
- **Same batch statistics.** Batch norm layers that train normalise with the global batch's
  statistics: torch's :class:`~torch.nn.SyncBatchNorm` on CUDA, :class:`AllReduceBatchNorm`
  elsewhere (SyncBatchNorm runs on GPUs only, and the CPU/gloo equivalence test needs it).
- **Same decisions.** Training-loss sums and counts are all-reduced; every rank runs the
  validation pass over the whole split and takes rank 0's metrics, so early stopping and the LR
  schedule decide alike everywhere. Rank 0 alone writes checkpoints, the others wait at a
  barrier and then read them (``checkpoint_dir`` must be one folder all ranks see).

What stays different: float sums run in another order (per-rank partial sums, all-reduce), so
results agree to rounding, not bit for bit. On a small well-conditioned network that is about
1e-7 relative after several epochs (tests/model_lib/training/test_distributed.py). The
DenseNet at random initialisation is ill-conditioned in float32 (its gradients cancel heavily
through the batch-norm stack), and Adam's first steps move each weight by about ``lr``
whatever its gradient's size, so any change of summation order, another CPU thread count
included, moves its weights by about ``lr`` within an epoch; DDP does no worse. Dropout masks
come from each rank's own generator (seeded per rank and epoch), so stages with active dropout
(the fusion classifier's) match a single process in distribution only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from model_lib.training.stages import (
    StageSpec,
    contrastive_features,
    stage_loss,
    stage_outputs,
)

logger = logging.getLogger(__name__)

GATHERED_LOSSES: frozenset[str] = frozenset({"triplet", "supcon"})
"""Losses over pairs of the batch: computed on the gathered global batch, not per rank."""
_SYNC_BN_DEVICES = frozenset({"cuda"})
"""Where torch's SyncBatchNorm runs; elsewhere :class:`AllReduceBatchNorm` does its job."""


@dataclass(frozen=True)
class LaunchEnv:
    """Where this process stands in a ``torchrun`` launch (its ``RANK``, ``WORLD_SIZE`` and
    ``LOCAL_RANK`` environment variables)."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: dict[str, str] | None = None) -> LaunchEnv | None:
    """The launch this process belongs to, or None when ``torchrun`` did not start it.

    Raises:
        ValueError: the variables are there but not integers, or inconsistent.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as err:
        raise ValueError(
            f"RANK={env['RANK']!r}, WORLD_SIZE={env['WORLD_SIZE']!r}, "
            f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: expected integers ({err})"
        ) from err
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"RANK={rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE={world})")
    return LaunchEnv(rank, world, local)


def init_distributed(
    device: str | torch.device | None = None, backend: str | None = None
) -> torch.device:
    """Join the process group ``torchrun`` describes; returns this rank's device.

    ``device`` None picks ``cuda:LOCAL_RANK`` when there is a GPU, else the CPU; a bare
    ``"cuda"`` becomes ``cuda:LOCAL_RANK``. The backend defaults to NCCL on CUDA and gloo on the
    CPU. ``MASTER_ADDR`` and ``MASTER_PORT`` come from the environment, as ``torchrun`` sets them.

    Raises:
        RuntimeError: the process was not started by ``torchrun`` (no ``RANK``/``WORLD_SIZE``).
    """
    env = launch_env()
    if env is None:
        raise RuntimeError("init_distributed: RANK and WORLD_SIZE are not set; start with torchrun")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, rank=env.rank, world_size=env.world_size)
    logger.info("rank %d of %d on %s (%s)", env.rank, env.world_size, device, backend)
    return device


def destroy_distributed() -> None:
    """Leave the process group, if this process is in one."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether a process group is initialised: training then runs data-parallel."""
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files and reports."""
    return not is_distributed() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing to wait for outside a process group)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _collective_device() -> torch.device:
    """Where a collective's tensors must live: the rank's GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(total: Tensor, count: int) -> tuple[Tensor, int]:
    """A loss sum and an image count summed over ranks (unchanged outside a process group)."""
    if not is_distributed():
        return total, count
    both = torch.stack([total.double(), total.new_tensor(float(count), dtype=torch.float64)])
    both = both.to(_collective_device())
    dist.all_reduce(both)
    return both[0].to(total.device), round(float(both[1]))


def broadcast_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Rank 0's values of ``metrics`` on every rank (same keys everywhere), so that every rank
    takes the same early-stopping and learning-rate decisions."""
    if not is_distributed():
        return metrics
    values = torch.tensor(list(metrics.values()), dtype=torch.float64)
    values = values.to(_collective_device())
    dist.broadcast(values, src=0)
    return dict(zip(metrics, values.tolist(), strict=True))


def shard_loader(loader: object, stage: str) -> Any:
    """This rank's part of a training loader (see :meth:`BatchLoader.shard`).

    Raises:
        TypeError: the loader cannot be sharded.
        ValueError: the stage's batch size does not split evenly over the ranks.
    """
    if not hasattr(loader, "shard"):
        raise TypeError(
            f"stage {stage}: {type(loader).__name__} has no shard(rank, world_size); "
            "distributed training needs a BatchLoader"
        )
    try:
        return loader.shard(dist.get_rank(), dist.get_world_size())
    except ValueError as err:
        raise ValueError(f"stage {stage}: {err}") from err


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum every rank uses is the sum of
    every rank's gradient (each rank backpropagates its own loss)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce_grad(x: Tensor) -> Tensor:
    """``x`` summed over ranks, with gradients summed over ranks on the way back."""
    return _AllReduceSum.apply(x)


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch, over every rank.

    What :class:`~torch.nn.SyncBatchNorm` does, for the devices it does not serve (the CPU):
    the per-channel sum and count, then the sum of squared deviations from the global mean, are
    all-reduced with autograd-aware collectives, so gradients flow through the statistics as in
    one process over the whole batch. Outside a process group, or in eval mode, it is a plain
    batch norm. Same parameters and buffers as the layer it replaces.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed() and dist.get_world_size() > 1):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        # Sums in float64: exact counts, and little rounding over large batches.
        x = input.float()
        local = x.new_tensor([input.numel() // input.shape[1]], dtype=torch.float64)
        sums = all_reduce_grad(torch.cat([x.sum(dims, dtype=torch.float64), local]))
        n = float(sums[-1].detach())
        mean = (sums[:-1] / n).float()
        centred = x - mean.reshape(shape)
        squares = (centred * centred).sum(dims, dtype=torch.float64)
        var = (all_reduce_grad(squares) / n).float()
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        # momentum None: a cumulative average, as the plain layer does.
        steps = float(self.num_batches_tracked)
        factor = 1.0 / steps if self.momentum is None else self.momentum
        # As F.batch_norm does: the running variance is the unbiased one.
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def _to_all_reduce_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, AllReduceBatchNorm | nn.SyncBatchNorm
    ):
        bn = AllReduceBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats,
        )  # fmt: skip
        # The same parameter and buffer objects: the optimiser keeps updating them.
        if module.affine:
            bn.weight, bn.bias = module.weight, module.bias
        bn.running_mean, bn.running_var = module.running_mean, module.running_var
        bn.num_batches_tracked = module.num_batches_tracked
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, _to_all_reduce_bn(child))
    return module


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with every batch-norm layer normalising over the global batch, in place
    (parameters and buffers are kept, so optimisers and state-dict keys are unaffected)."""
    if device.type in _SYNC_BN_DEVICES:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_all_reduce_bn(model)


def gather_rows(x: Tensor, counts: Sequence[int]) -> Tensor:
    """Every rank's rows of ``x`` stacked in rank order: (sum(counts), *x.shape[1:]).

    ``counts[r]`` is rank r's number of rows. Differentiable: the backward pass sums the
    gradients every rank computed for a row and hands them to the rank that owns it, which is
    right when every rank computes the same loss of the gathered rows.
    """
    rank = dist.get_rank()
    before, after = sum(counts[:rank]), sum(counts[rank + 1 :])
    padded = torch.cat([x.new_zeros((before, *x.shape[1:])), x, x.new_zeros((after, *x.shape[1:]))])
    if not x.requires_grad:
        dist.all_reduce(padded)
        return padded
    return all_reduce_grad(padded)


def _rank_counts(n: int, device: torch.device) -> list[int]:
    """Every rank's number of images in the current batch, in rank order."""
    mine = torch.tensor([n], dtype=torch.int64, device=device)
    counts = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, mine)
    return [int(c) for c in counts]


class _StageForward(nn.Module):
    """A stage's forward pass and loss as one module, so that DDP sees everything that trains
    (the model's trained parts and the stage's own module) in a single forward call."""

    def __init__(self, model: nn.Module, spec: StageSpec, stage_module: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.stage_module = stage_module
        self.spec = spec

    def forward(self, images: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        outputs = stage_outputs(self.model, self.spec, images)
        n = len(targets["label"])
        counts = _rank_counts(n, _collective_device())
        if self.spec.loss in GATHERED_LOSSES:
            # The loss of the whole global batch on every rank; gather_rows' backward sums the
            # world_size identical copies of its gradient, and DDP's average divides them out.
            key = contrastive_features(self.spec)
            outputs = {key: gather_rows(outputs[key].float(), counts)}
            labels = gather_rows(targets["label"].to(_collective_device()), counts)
            targets = {"label": labels.to(images.device)}
            loss = stage_loss(self.spec, outputs, targets, self.stage_module)
            return loss, loss
        if n == 0:
            # None of a short last batch is this rank's. It still takes the step, as DDP and the
            # batch-norm collectives need every rank, and adds nothing: a zero connected to the
            # graph (a mean loss over no image would be NaN).
            nothing = sum(out.float().sum() for out in outputs.values()) * 0.0
            return nothing, nothing
        loss = stage_loss(self.spec, outputs, targets, self.stage_module)
        return loss, loss * (n * len(counts) / sum(counts))


class DistributedStage:
    """One stage's training forward under DistributedDataParallel.

    Converts the model's batch norms (:func:`sync_batchnorm`) and wraps the forward pass and
    loss in DDP, with ``find_unused_parameters``: some trained parameters get no gradient (the
    DenseNet head in the joint stage, ``norm5`` under the triplet loss), and a rank with an
    empty last batch does not reach the stage's own module. Called with a batch, it returns
    ``(loss, objective)``: the rank's loss for the record and what to backpropagate (see the
    module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: StageSpec,
        stage_module: nn.Module | None,
        device: torch.device,
        seed: int,
    ) -> None:
        sync_batchnorm(model, device)
        if stage_module is not None:
            sync_batchnorm(stage_module, device)
        self.seed = seed
        gpu = None
        if device.type == "cuda":
            gpu = [torch.cuda.current_device() if device.index is None else device.index]
        self.ddp = DistributedDataParallel(
            _StageForward(model, spec, stage_module), device_ids=gpu, find_unused_parameters=True
        )

    def __call__(self, images: Tensor, targets: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.ddp(images, targets)

    def set_epoch(self, epoch: int) -> None:
        """Seed this rank's dropout for the epoch: different on each rank, and repeatable
        (a resumed run draws the same masks)."""
        words = np.random.SeedSequence([self.seed, epoch, dist.get_rank()]).generate_state(2)
        torch.manual_seed(int(words[0]) << 32 | int(words[1]))


def launch_command(
    n_procs: int, module: str, args: Sequence[str], *, python: str | None = None
) -> list[str]:
    """The command that runs ``python -m module args`` in ``n_procs`` processes on this machine
    through ``torchrun`` (``torch.distributed.run``, a free rendezvous port).

    Raises:
        ValueError: ``n_procs`` < 1.
    """
    if n_procs < 1:
        raise ValueError(f"n_procs must be >= 1, got {n_procs}")
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n_procs}",
        "-m",
        module,
        *args,
    ]
