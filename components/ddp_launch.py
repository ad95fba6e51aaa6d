"""Multi-GPU training of one stage: re-run it under ``torchrun`` when the machine has GPUs to
spare, else leave it to the caller.

:func:`maybe_torchrun` launches ``python -m torch.distributed.run --standalone
--nproc_per_node=N -m components.ddp_stage ...`` (one process per GPU, see
:mod:`components.ddp_stage`), waits, and returns the :class:`StageOutcome` rank 0 wrote, with
the callbacks replayed over the stage's history (the ranks log nothing themselves). With one GPU
or none it returns None and the caller trains in its own process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from components.ddp_stage import outcome_from_json
from model_lib.presets import get_preset
from model_lib.training.callbacks import Callback
from model_lib.training.distributed import launch_command
from model_lib.training.experiment import StageOutcome
from model_lib.training.precision import PrecisionName

logger = logging.getLogger(__name__)

OUTCOME_FILE = "ddp-outcome.json"
_ROOT = Path(__file__).resolve().parents[1]


def processes_for(batch_size: int, gpus: int) -> int:
    """The most processes, one per GPU at most, over which ``batch_size`` splits evenly."""
    return max((k for k in range(1, gpus + 1) if batch_size % k == 0), default=1)


def stage_args(
    stage: str,
    preset: str,
    overrides: Sequence[str],
    store: Path,
    maps: Path,
    workdir: Path,
    weights_out: Path,
    *,
    init_weights: Path | None,
    precision: PrecisionName | None,
    outcome: Path,
) -> list[str]:
    """The command-line arguments of :mod:`components.ddp_stage`, with absolute paths."""
    args = ["--stage", stage, "--preset", preset]
    for override in overrides:
        args += ["--override", override]
    paths = {
        "--store": store,
        "--maps": maps,
        "--workdir": workdir,
        "--weights-out": weights_out,
        "--outcome": outcome,
    }
    if init_weights is not None:
        paths["--init-weights"] = init_weights
    for flag, path in paths.items():
        args += [flag, str(Path(path).resolve())]
    return args if precision is None else [*args, "--precision", precision]


def maybe_torchrun(
    stage: str,
    preset: str,
    overrides: Sequence[str],
    store: Path,
    maps: Path,
    workdir: Path,
    weights_out: Path,
    *,
    init_weights: Path | None = None,
    precision: PrecisionName | None = None,
    callbacks: Sequence[Callback] = (),
    n_procs: int | None = None,
) -> StageOutcome | None:
    """Train ``stage`` data-parallel over ``n_procs`` processes when that is more than one and
    the stage is enabled; None otherwise, for the caller to train in-process.

    ``n_procs`` None: one process per visible GPU, or fewer, the most that split the stage's
    batch size evenly (batch 6 on 4 GPUs trains on 3).

    ``workdir`` holds the checkpoints (a killed run resumes from them) and the outcome file.
    After the run, each callback sees the stage start, every epoch's metrics and the result, as
    if it had watched the training.

    Raises:
        RuntimeError: torchrun exited with an error (the ranks' output went to this process's
            stdout and stderr).
        KeyError, ValueError: an unknown stage or preset, or bad overrides (before launching).
    """
    spec = get_preset(preset, overrides).stage(stage)
    n = n_procs
    if n is None:
        n = processes_for(spec.batch_size, torch.cuda.device_count())
    if n <= 1 or not spec.enabled:  # a disabled stage only passes its weights on
        return None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    outcome_path = workdir / OUTCOME_FILE
    outcome_path.unlink(missing_ok=True)
    args = stage_args(
        stage,
        preset,
        overrides,
        store,
        maps,
        workdir,
        weights_out,
        init_weights=init_weights,
        precision=precision,
        outcome=outcome_path,
    )
    command = launch_command(n, "components.ddp_stage", args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
    logger.info("stage %s on %d processes: %s", stage, n, " ".join(command))
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0 or not outcome_path.is_file():
        raise RuntimeError(
            f"stage {stage}: torchrun over {n} processes exited with {done.returncode}"
            + ("" if outcome_path.is_file() else f" and wrote no {outcome_path}")
        )
    outcome = outcome_from_json(json.loads(outcome_path.read_text(encoding="utf-8")))
    if outcome.fit is not None:
        for callback in callbacks:
            callback.on_stage_start(spec, 0)
        for epoch, metrics in enumerate(outcome.fit.history):
            for callback in callbacks:
                callback.on_epoch_end(stage, epoch, metrics)
        for callback in callbacks:
            callback.on_stage_end(outcome.fit)
    return outcome
