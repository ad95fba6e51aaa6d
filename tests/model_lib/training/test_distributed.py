"""Data-parallel training: two gloo processes on the CPU train as one process does.

The slow test spawns real ranks (torch.multiprocessing, gloo on 127.0.0.1) and compares their
training with a single process over the same global batches: the per-epoch losses and the final
weights agree to float32 rounding. Exact equality is not expected: each rank sums its own part
of the batch, batch-norm statistics and gradients are then summed across ranks, so float
additions run in another order (about 1e-7 relative here). RTOL is 1e-4, far below what a wrong
batch, loss weight, gather or unsynchronised batch norm gives (1e-3 and more, each checked).
The toy network keeps the comparison that tight; the DenseNet at random initialisation is too
ill-conditioned in float32 for it (see model_lib/training/distributed.py).
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.training import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    StageSpec,
    fit_stage,
    run_stages,
    split_loaders,
)
from model_lib.training import fit as fit_module
from model_lib.training.distributed import (
    AllReduceBatchNorm,
    destroy_distributed,
    init_distributed,
    launch_command,
    launch_env,
    sync_batchnorm,
)
from tests.model_lib.training.conftest import ToyNet, make_split

WORLD = 2
RTOL = 1e-4
ATOL = 1e-6
SEED = 7


def specs() -> list[StageSpec]:
    """Stage 1a's triplet loss (gathered over ranks) on pooled features, then on the maps (the
    authors' form), 1b's CE through the DenseNet branch's batch norms, 2's KL; lr_patience 0
    drops the LR (and reloads best.pt) on a worse epoch."""
    common: dict[str, Any] = {"batch_size": 8, "max_epochs": 3, "lr": 1e-2, "lr_patience": 0}
    triplet: dict[str, Any] = {"trains": ("densenet",), "loss": "triplet", "branch": "densenet"}
    return [
        StageSpec(name="s1a", **triplet, **common),
        StageSpec(name="s1a-map", triplet_features="map", **triplet, **common),
        StageSpec(
            name="s1b",
            trains=("densenet", "densenet_head"),
            loss="ce_densenet",
            branch="densenet",
            **common,
        ),
        StageSpec(name="s2", trains=("encoder", "decoder", "saliency_head"), loss="kl", **common),
    ]


def data() -> tuple[SplitArrays, SplitArrays]:
    # 25 images: three full batches of 8 (4 per rank), then one image, which rank 0 trains on
    # with its loss weighted x2 while rank 1 has none.
    return make_split(25, seed=1), make_split(12, seed=2, shift=1)


def toy() -> ToyNet:
    """The toy net without biases before its batch norms, as the real network has none: their
    true gradient is 0, and Adam would scale the rounding noise in it up to full steps, so
    those biases (and the running means that follow them) would walk apart between any two runs
    that sum in another order."""
    torch.manual_seed(0)
    model = ToyNet()
    for block in model.modules():
        kinds = [type(m) for m in block.children()][:2] if isinstance(block, nn.Sequential) else []
        if kinds == [nn.Conv2d, nn.BatchNorm2d]:
            block[0].bias = None
    return model


def train_chain(checkpoint_dir: Path, device: torch.device) -> dict[str, Any]:
    """The chain on the toy net: per stage the history; the final weights (on the CPU)."""
    model = toy()
    results = run_stages(
        model,
        specs(),
        split_loaders(*data(), seed=SEED),
        checkpoint_dir=checkpoint_dir,
        device=device,
        progress=False,
        precision="fp32",
        seed=SEED,
    )
    return {
        "history": {name: fit.history for name, fit in results.items()},
        "weights": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }


def _worker(rank: int, port: int, out: str, device: str) -> None:
    """One rank: join the group from torchrun's variables, train the chain, save what it got."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    _deterministic()
    # gloo on CUDA too: NCCL refuses two ranks on one GPU, and this test has one at most.
    on = init_distributed("cuda:0" if device == "cuda" else "cpu", backend="gloo")
    assert on.type == device and dist.get_world_size() == WORLD
    # Which rank writes checkpoints: the real writer, recorded on the way through.
    writes: list[str] = []
    real_save = fit_module.save_checkpoint

    def recording_save(path: Path, payload: dict[str, Any]) -> None:
        writes.append(Path(path).name)
        real_save(path, payload)

    fit_module.save_checkpoint = recording_save
    try:
        result = train_chain(Path(out) / "checkpoints", on)
    finally:
        fit_module.save_checkpoint = real_save
        destroy_distributed()
    torch.save({**result, "writes": writes}, Path(out) / f"rank{rank}.pt")


def _deterministic() -> None:
    # TF32 and autotuned cuDNN kernels would differ between batches of 4 and 8 far more than
    # the summation order does.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def outputs(weights: dict[str, torch.Tensor], images: torch.Tensor) -> dict[str, torch.Tensor]:
    model = toy()
    model.load_state_dict(weights)
    with torch.no_grad():
        return model.eval()(images)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_two_ranks_train_as_one_process(tmp_path: Path, device: str) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path), device), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    _deterministic()
    single = train_chain(tmp_path / "single", torch.device(device))

    # The ranks agree with each other exactly: the same reduced losses, the same updates.
    assert ranks[0]["history"] == ranks[1]["history"]
    for key, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][key]), key

    # Two ranks x 4 images follow one process x 8 images, epoch by epoch and stage by stage.
    assert ranks[0]["history"].keys() == single["history"].keys()
    for stage, history in single["history"].items():
        ddp = ranks[0]["history"][stage]
        assert len(ddp) == len(history), stage
        for name in history[0]:
            np.testing.assert_allclose(
                [m[name] for m in ddp],
                [m[name] for m in history],
                rtol=RTOL,
                err_msg=f"{stage} {name}",
            )
    for key, value in single["weights"].items():
        # The saliency log-softmax over pixels ignores this bias: zero true gradient, so Adam
        # walks it on rounding noise (see toy()); the outputs below show it changes nothing.
        if key != "saliency_head.bias":
            torch.testing.assert_close(ranks[0]["weights"][key], value, rtol=RTOL, atol=ATOL)
    images = BatchLoader(data()[1], 12).batch(np.arange(12))["image"]
    ours, theirs = outputs(ranks[0]["weights"], images), outputs(single["weights"], images)
    for key in ("saliency", "densenet_logits", "fusion_logits"):
        torch.testing.assert_close(ours[key], theirs[key], rtol=RTOL, atol=1e-5)

    # Only rank 0 wrote checkpoints: every stage's last.pt and best.pt.
    assert ranks[1]["writes"] == []
    assert ranks[0]["writes"].count(BEST_CHECKPOINT) >= len(specs())
    for spec in specs():
        assert (tmp_path / "checkpoints" / spec.name / LAST_CHECKPOINT).is_file()


# --- one process in a group, and the pieces ---------------------------------------------------


@contextmanager
def group_of_one() -> Iterator[None]:
    """This process as the only rank of a gloo group, as `torchrun --nproc_per_node=1` makes."""
    with pytest.MonkeyPatch.context() as env:
        for key, value in {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
            "RANK": "0",
            "WORLD_SIZE": "1",
            "LOCAL_RANK": "0",
        }.items():
            env.setenv(key, value)
        init_distributed("cpu")
        try:
            yield
        finally:
            destroy_distributed()


def test_a_group_of_one_trains_exactly_as_no_group(tmp_path: Path) -> None:
    """The DDP path adds nothing of its own: with one rank, the same numbers bit for bit."""
    alone = train_chain(tmp_path / "alone", torch.device("cpu"))
    with group_of_one():
        grouped = train_chain(tmp_path / "group", torch.device("cpu"))
    assert grouped["history"] == alone["history"]
    for key, value in alone["weights"].items():
        assert torch.equal(grouped["weights"][key], value), key


def test_distributed_training_needs_a_shardable_loader(tmp_path: Path) -> None:
    spec = next(s for s in specs() if s.name == "s2")
    train, val = data()
    batches = list(BatchLoader(train, spec.batch_size))
    with group_of_one(), pytest.raises(TypeError, match="stage s2: list has no shard"):
        fit_stage(toy(), spec, batches, BatchLoader(val, 8), checkpoint_dir=tmp_path)


def test_batch_norms_become_global_ones_in_place() -> None:
    model = toy()
    params = {id(p) for p in model.parameters()}
    keys = list(model.state_dict())
    sync_batchnorm(model, torch.device("cpu"))
    kinds = [type(m) for m in model.modules()]
    assert AllReduceBatchNorm in kinds and nn.BatchNorm2d not in kinds
    # The optimiser's parameters and the checkpoints' keys are those of the plain model.
    assert {id(p) for p in model.parameters()} == params
    assert list(model.state_dict()) == keys


def test_shards_split_every_global_batch() -> None:
    loader = BatchLoader(make_split(25, seed=1), 8, shuffle=True, seed=SEED)
    shards = [loader.shard(rank, WORLD) for rank in range(WORLD)]
    for epoch in (0, 3):
        for part in (loader, *shards):
            part.set_epoch(epoch)
        whole = [b["index"].tolist() for b in loader]
        parts = [[b["index"].tolist() for b in shard] for shard in shards]
        assert [len(shard) for shard in shards] == [len(p) for p in parts] == [len(loader)] * 2
        for i, rows in enumerate(whole):
            mine, theirs = parts[0][i], parts[1][i]
            assert not set(mine) & set(theirs)
            assert sorted(mine + theirs) == sorted(rows)
        # 4 + 4 per full batch; the last image goes to rank 0, rank 1 gets an empty batch.
        assert [(len(a), len(b)) for a, b in zip(*parts, strict=True)] == [(4, 4)] * 3 + [(1, 0)]
    empty = next(iter(BatchLoader(make_split(1, seed=1), 8).shard(1, WORLD)))
    assert empty["image"].shape == (0, 1, *make_split(1, seed=1).images.shape[1:])


@pytest.mark.parametrize(
    ("batch_size", "rank", "world", "message"),
    [
        (6, 0, 4, "batch size 6 does not split evenly over 4 processes"),
        (8, 2, 2, r"rank 2 is not in 0\.\.1"),
        (8, 0, 0, r"rank 0 is not in 0\.\.-1"),
    ],
)
def test_shard_rejects(batch_size: int, rank: int, world: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchLoader(make_split(4, seed=1), batch_size).shard(rank, world)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
        ({"RANK": "0", "WORLD_SIZE": "1"}, (0, 1, 0)),
    ],
)
def test_launch_env(environ: dict[str, str], expected: tuple[int, int, int] | None) -> None:
    env = launch_env(environ)
    assert (env if env is None else (env.rank, env.world_size, env.local_rank)) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "expected integers"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 is not in 0..WORLD_SIZE-1"),
    ],
)
def test_launch_env_rejects(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        launch_env(environ)


def test_init_needs_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="start with torchrun"):
        init_distributed("cpu")


def test_launch_command() -> None:
    command = launch_command(4, "components.ddp_stage", ["--stage", "s2"], python="py")
    assert command == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
        "-m", "components.ddp_stage", "--stage", "s2",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="n_procs must be >= 1"):
        launch_command(0, "m", [])


# --- the launcher ---------------------------------------------------------------------------


def test_no_torchrun_for_one_process(tmp_path: Path) -> None:
    from components.ddp_launch import maybe_torchrun

    paths = [tmp_path / name for name in ("store", "maps", "work", "weights.pt")]
    assert maybe_torchrun("s2", "ci", [], *paths, n_procs=1) is None
    if torch.cuda.device_count() <= 1:
        assert maybe_torchrun("s2", "ci", [], *paths) is None
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("batch_size", "gpus", "expected"), [(16, 8, 8), (6, 4, 3), (6, 8, 6), (7, 4, 1), (8, 0, 1)]
)
def test_processes_split_the_batch_evenly(batch_size: int, gpus: int, expected: int) -> None:
    from components.ddp_launch import processes_for

    assert processes_for(batch_size, gpus) == expected


def test_stage_arguments_and_outcome_round_trip(tmp_path: Path) -> None:
    from components.ddp_launch import stage_args
    from components.ddp_stage import outcome_from_json, outcome_to_json, parse_args
    from model_lib.training import FitResult, StageOutcome

    args = parse_args(
        stage_args(
            "s2", "ci", ["seed=3", "stages.s2.max_epochs=2"], tmp_path / "store",
            tmp_path / "maps", tmp_path / "work", tmp_path / "w.pt",
            init_weights=tmp_path / "s1b.pt", precision="fp32", outcome=tmp_path / "o.json",
        )
    )  # fmt: skip
    assert (args.stage, args.preset, args.overrides) == (
        "s2",
        "ci",
        ["seed=3", "stages.s2.max_epochs=2"],
    )
    assert args.init_weights == tmp_path / "s1b.pt" and args.precision == "fp32"
    assert args.workdir.is_absolute() and args.outcome == tmp_path / "o.json"

    fit = FitResult("s2", [{"train_loss": 1.0, "val_loss": float("nan")}], tmp_path / "best.pt",
                    0, {"train_loss": 1.0, "val_loss": float("nan")}, "max_epochs")  # fmt: skip
    for outcome in (StageOutcome(fit, tmp_path / "w.pt", 2.5), StageOutcome(None, tmp_path, 0.0)):
        back = outcome_from_json(json.loads(json.dumps(outcome_to_json(outcome))))
        assert (back.weights, back.seconds) == (outcome.weights, outcome.seconds)
        if outcome.fit is None:
            assert back.fit is None
        else:
            assert back.fit is not None and back.fit.best_checkpoint == fit.best_checkpoint
            assert back.fit.history[0]["train_loss"] == 1.0
            assert math.isnan(back.fit.final_metrics["val_loss"])
