"""One training stage on every rank of a ``torchrun`` launch (``python -m components.ddp_stage``).

Each rank joins the process group and calls :func:`model_lib.training.experiment.train_stage`,
whose ``fit_stage`` then trains data-parallel. Rank 0 owns the outputs: the weights, the
checkpoints under ``<workdir>/checkpoints`` and an outcome JSON that
:func:`components.ddp_launch.maybe_torchrun` reads back. The other ranks work in
``<workdir>/.ranks/<rank>/`` (their own config record and weights copy, removed on success)
with ``checkpoints`` linked to rank 0's, which they read after rank 0 has written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from model_lib.presets import get_preset
from model_lib.training.distributed import destroy_distributed, init_distributed
from model_lib.training.experiment import CHECKPOINTS_DIR, StageOutcome, train_stage
from model_lib.training.fit import FitResult

logger = logging.getLogger(__name__)

RANKS_DIR = ".ranks"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m components.ddp_stage", description=__doc__)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--override", action="append", default=[], dest="overrides")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--maps", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="shared by every rank")
    parser.add_argument("--weights-out", type=Path, required=True)
    parser.add_argument("--init-weights", type=Path, default=None)
    parser.add_argument("--outcome", type=Path, required=True, help="JSON rank 0 writes")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="default: the preset's",
    )
    parser.add_argument("--device", default=None, help="default: this rank's GPU, else cpu")
    return parser.parse_args(argv)


def outcome_to_json(outcome: StageOutcome) -> dict[str, Any]:
    """A :class:`StageOutcome` as plain JSON values (:func:`outcome_from_json` reverses it)."""
    fit = outcome.fit
    return {
        "weights": str(outcome.weights),
        "seconds": outcome.seconds,
        "fit": None
        if fit is None
        else {
            "stage": fit.stage,
            "history": fit.history,
            "best_checkpoint": str(fit.best_checkpoint),
            "best_epoch": fit.best_epoch,
            "final_metrics": fit.final_metrics,
            "stopped_reason": fit.stopped_reason,
        },
    }


def outcome_from_json(data: dict[str, Any]) -> StageOutcome:
    fit = data["fit"]
    return StageOutcome(
        fit=None
        if fit is None
        else FitResult(**{**fit, "best_checkpoint": Path(fit["best_checkpoint"])}),
        weights=Path(data["weights"]),
        seconds=float(data["seconds"]),
    )


def _rank_paths(workdir: Path, weights_out: Path, rank: int) -> tuple[Path, Path]:
    """Rank 0 works in ``workdir``; another rank in its own folder beside the shared
    checkpoints, so that no two ranks write the same file."""
    if rank == 0:
        return workdir, weights_out
    own = workdir / RANKS_DIR / str(rank)
    own.mkdir(parents=True, exist_ok=True)
    shared = workdir / CHECKPOINTS_DIR
    shared.mkdir(parents=True, exist_ok=True)
    link = own / CHECKPOINTS_DIR
    if not link.is_symlink():
        link.symlink_to(shared.resolve(), target_is_directory=True)
    return own, own / "weights.pt"


def run(argv: Sequence[str] | None = None) -> StageOutcome:
    """Train the stage on this rank; rank 0 writes ``--weights-out`` and ``--outcome``."""
    args = parse_args(argv)
    cfg = get_preset(args.preset, args.overrides)
    device = init_distributed(args.device)
    try:
        rank = dist.get_rank()
        workdir, weights_out = _rank_paths(args.workdir, args.weights_out, rank)
        outcome = train_stage(
            cfg,
            args.stage,
            args.store,
            args.maps,
            workdir,
            weights_out,
            init_weights=args.init_weights,
            progress=False,
            device=device,
            precision=args.precision,
        )
        if rank == 0:
            args.outcome.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.outcome.with_name(f".{args.outcome.name}.tmp")
            tmp.write_text(json.dumps(outcome_to_json(outcome), indent=2), encoding="utf-8")
            tmp.replace(args.outcome)
            logger.info("stage %s: weights %s, outcome %s", args.stage, weights_out, args.outcome)
        else:
            shutil.rmtree(workdir)
            with contextlib.suppress(OSError):  # the last rank out removes the folder
                workdir.parent.rmdir()
    finally:
        destroy_distributed()
    return outcome


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    run()
