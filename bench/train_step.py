"""Training-step benchmark: the paper network at 320x256, each way of running it on this machine.

One step is what ``fit_stage`` does per batch in the joint stage 3' (``s3j``: every part trained):
forward, saliency KL + cross-entropy (uncertainty-weighted), backward, Adam step. It is timed for
each variant: plain float32 NCHW (the baseline), float32 channels-last, bfloat16 autocast with
channels-last (what ``PrecisionPlan`` "bf16" does), and optionally ``torch.compile`` of the
fastest float32 eager variant. "auto" (``resolve_precision``) picks bfloat16 only on CPUs with
bfloat16 matrix units; the fastest measured variant is reported as the optimised path.

FLOPs of one step are counted once (``FlopCounterMode``) to give the achieved GFLOP/s, against the
peak of square ``torch.mm`` measured in the same run: float32 at 2048^2, bfloat16 at 2048^2 on
CPUs with bfloat16 units and at 1024^2 elsewhere (emulated, it runs below 1 GFLOP/s).

A paper-size step takes seconds per image on a CPU core, so the default batch is 2; each
variant gets 1 warm-up and 2 timed steps, interleaved across variants, except emulated bfloat16
(several times slower on CPUs without bfloat16 units), which gets 1 step. Environment:

- ``BENCH_TRAIN_BATCH`` (default 2): the batch size (8 for the full-size check; the paper's stage
  batches are 6-16).
- ``BENCH_TRAIN_VARIANTS``: comma-separated subset of ``fp32,fp32_cl,bf16,compile``
  (default ``fp32,fp32_cl,bf16``; ``compile`` adds many minutes of compilation).
- ``BENCH_THREADS`` (default 1): torch threads; see :func:`bench_threads`.

``run()`` returns rows for the bench runner; ``time_steps`` also serves ``bench.loader``.
Run: ``python -m bench.train_step``.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from model_lib.config import ModelConfig
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training.precision import PrecisionPlan, cpu_has_bf16_units, resolve_precision
from model_lib.training.stages import (
    StageSpec,
    frozen_parts,
    make_stage_module,
    stage_loss,
    stage_outputs,
)

TARGET_RATIO = 1.8
DEFAULT_VARIANTS = ("fp32", "fp32_cl", "bf16")
MM_SIZE = 2048
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Variant:
    """One way of running the step: a precision plan, optionally under ``torch.compile``."""

    name: str
    plan: PrecisionPlan
    compile: bool = False


VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32 NCHW", PrecisionPlan(CPU, None, channels_last=False, grad_scaler=False)),
    "fp32_cl": Variant(
        "fp32 channels_last", PrecisionPlan(CPU, None, channels_last=True, grad_scaler=False)
    ),
    "bf16": Variant("bf16 autocast channels_last", resolve_precision("bf16", CPU)),
}


@dataclass(frozen=True)
class StepTiming:
    """Seconds of each timed step, and FLOPs of one step when they were counted (else 0)."""

    variant: str
    batch: int
    seconds: list[float]
    flops: float

    @property
    def images_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)


class _Step:
    """The stage prepared as ``fit_stage`` prepares it: trained parts and the stage module get
    gradients and Adam, frozen parts stay in eval mode."""

    def __init__(self, model: nn.Module, spec: StageSpec, variant: Variant) -> None:
        frozen = frozen_parts(model, spec)
        plan = variant.plan
        self.model = plan.place(model)
        self.spec = spec
        self.plan = plan
        self.stage_module = make_stage_module(spec, model)
        params = [p for name in spec.trains for p in model.get_submodule(name).parameters()]
        if self.stage_module is not None:
            plan.place(self.stage_module)
            params += list(self.stage_module.parameters())
        model.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        model.train()
        for name in frozen:
            model.get_submodule(name).eval()
        self.optimizer = torch.optim.Adam(params, lr=spec.lr)
        self.forward: Callable[[Tensor], dict[str, Tensor]] = (
            torch.compile(self._forward) if variant.compile else self._forward
        )

    def _forward(self, images: Tensor) -> dict[str, Tensor]:
        return stage_outputs(self.model, self.spec, images)

    def __call__(self, batch: dict[str, Tensor]) -> None:
        with self.plan.autocast():
            outputs = self.forward(self.plan.images(batch["image"]))
            loss = stage_loss(self.spec, outputs, batch, self.stage_module)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def random_batch(batch: int, hw: tuple[int, int], seed: int = 0) -> dict[str, Tensor]:
    """A batch as ``BatchLoader`` yields it: image (B, 1, H, W), saliency (B, 1, H, W) summing to
    1 per image, label (B,)."""
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(batch, 1, *hw, generator=g) + 1e-3
    return {
        "image": torch.rand(batch, 1, *hw, generator=g),
        "saliency": maps / maps.sum(dim=(2, 3), keepdim=True),
        "label": torch.randint(0, 3, (batch,), generator=g),
    }


def time_steps(
    model_cfg: ModelConfig,
    spec: StageSpec,
    batch: int,
    runs: Sequence[tuple[Variant, int, int]],
    *,
    count_flops: bool = False,
    label: str = "",
) -> list[StepTiming]:
    """Time training steps of ``spec`` on random (batch, 1, H, W) inputs, for each
    (variant, warm-up steps, timed steps) of ``runs``.

    Every variant trains its own copy of the seed-0 model. After the warm-ups, the timed steps
    go in rounds, one step of each variant per round in alternating order, so that a change in
    background load hits all variants alike. With ``count_flops``, the first variant's first
    warm-up step is run under ``FlopCounterMode``.
    """
    data = random_batch(batch, model_cfg.input_hw)
    steps = []
    for variant, _, _ in runs:
        torch.manual_seed(0)
        steps.append(_Step(build_model(model_cfg, pretrained=False), spec, variant))
    flops = 0.0
    for k, (step, (variant, warmup, _)) in enumerate(zip(steps, runs, strict=True)):
        for i in range(warmup):
            start = time.perf_counter()
            if k == 0 and i == 0 and count_flops:
                counter = FlopCounterMode(display=False)
                with counter:
                    step(data)
                flops = float(counter.get_total_flops())
            else:
                step(data)
            elapsed = time.perf_counter() - start
            print(f"  {label}{variant.name} b{batch} warm-up step: {elapsed:.2f} s", flush=True)
    seconds: list[list[float]] = [[] for _ in runs]
    for r in range(max(timed for _, _, timed in runs)):
        order = range(len(runs)) if r % 2 == 0 else reversed(range(len(runs)))
        for k in order:
            variant, _, timed = runs[k]
            if r < timed:
                start = time.perf_counter()
                steps[k](data)
                seconds[k].append(time.perf_counter() - start)
                print(f"  {label}{variant.name} b{batch} timed step: {seconds[k][-1]:.2f} s",
                      flush=True)  # fmt: skip
    return [
        StepTiming(variant.name, batch, times, flops if k == 0 else 0.0)
        for k, ((variant, _, _), times) in enumerate(zip(runs, seconds, strict=True))
    ]


def mm_peak_gflops(dtype: torch.dtype, repeats: int, size: int = MM_SIZE) -> float:
    """Best GFLOP/s of ``torch.mm`` on (size, size) matrices of ``dtype`` (after one warm-up)."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=g).to(dtype)
    b = torch.rand(size, size, generator=g).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def _selected(names: list[str]) -> list[Variant]:
    """The eager variants named, fp32 NCHW (the baseline) first."""
    unknown = [n for n in names if n not in (*VARIANTS, "compile")]
    if unknown or "fp32" not in names:
        raise ValueError(
            f"BENCH_TRAIN_VARIANTS={','.join(names)!r}: must include fp32 and use only "
            f"{[*VARIANTS, 'compile']}"
        )
    return [VARIANTS["fp32"]] + [VARIANTS[n] for n in names if n not in ("fp32", "compile")]


def measure(batch: int, variant_names: str | None = None) -> dict:
    """Timings of every selected variant, the mm peaks and the step FLOPs."""
    names = [n.strip() for n in (variant_names or ",".join(DEFAULT_VARIANTS)).split(",")]
    cfg = get_preset("paper")
    spec = cfg.stage("s3j")
    # Without bfloat16 units, bfloat16 mm runs below 1 GFLOP/s: a smaller matrix, once.
    bf16_size, bf16_repeats = (MM_SIZE, 5) if cpu_has_bf16_units() else (MM_SIZE // 2, 1)
    peaks = {
        "fp32": mm_peak_gflops(torch.float32, 5),
        "bf16": mm_peak_gflops(torch.bfloat16, bf16_repeats, bf16_size),
    }
    print(
        f"  mm peak: fp32 {peaks['fp32']:.1f} GFLOP/s ({MM_SIZE}^2), "
        f"bf16 {peaks['bf16']:.2f} GFLOP/s ({bf16_size}^2)",
        flush=True,
    )
    runs = []
    for variant in _selected(names):
        # bfloat16 without bfloat16 units is several times slower: one step, its one-off costs
        # (optimizer state, oneDNN primitives) are a small part of it.
        emulated = variant.plan.dtype == torch.bfloat16 and not cpu_has_bf16_units()
        runs.append((variant, 0, 1) if emulated else (variant, 1, 2))
    timings = time_steps(cfg.model, spec, batch, runs, count_flops=True)
    if "compile" in names:
        # Compile the fastest float32 eager layout: the compiler keeps its memory format.
        eager = [t for t in timings if t.variant.startswith("fp32")]
        best = max(eager, key=lambda t: t.images_per_s)
        base = next(v for v in VARIANTS.values() if v.name == best.variant)
        variant = Variant(f"{base.name} + torch.compile", base.plan, compile=True)
        timings += time_steps(cfg.model, spec, batch, [(variant, 1, 2)])
    return {
        "batch": batch,
        "timings": timings,
        "peaks": peaks,
        "bf16_mm_size": bf16_size,
        "flops_per_step": timings[0].flops,
    }


@contextmanager
def bench_threads() -> Iterator[int]:
    """Torch intra-op threads inside the block: ``BENCH_THREADS``, default 1 (as the heatmap and
    ingest cases run); restored on exit. Yields the number used.

    One thread keeps the timings stable on a machine shared with other jobs: there, one thread
    per core is several times slower than one thread, because the threads wait for each other
    at every operator. On an idle machine ``BENCH_THREADS=<cores>`` measures the full machine.
    """
    before = torch.get_num_threads()
    threads = int(os.environ.get("BENCH_THREADS") or 1)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def machine_fields(threads: int) -> dict[str, str]:
    """The rows' ``machine`` (with torch threads and the 1-minute load average: other work on
    the machine slows every timing) and ``date``."""
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus"
    load = os.getloadavg()[0]
    return {
        "machine": " ".join(f"{machine}, {threads} threads, load {load:.1f}".split()),
        "date": date.today().isoformat(),
    }


def rows_from(result: dict, threads: int) -> list[dict]:
    """Bench rows: one per variant against fp32 NCHW, the optimised one (the fastest) with the
    target, its achieved GFLOP/s against the fp32 mm peak, and the bf16 mm peak against fp32."""
    common = machine_fields(threads)
    batch, timings, peaks = result["batch"], result["timings"], result["peaks"]
    base = timings[0]
    where = f"paper 320x256 b{batch}"
    rows = [
        {
            "name": f"train step {where}: {t.variant} vs fp32 NCHW",
            "value": t.images_per_s,
            "unit": "images/s",
            "baseline": base.images_per_s,
            "ratio": t.images_per_s / base.images_per_s,
            "target": None,
            **common,
        }
        for t in timings[1:]
    ]
    best = max(timings, key=lambda t: t.images_per_s)
    rows.append(
        {
            "name": f"train step {where}: optimised ({best.variant}) vs fp32 NCHW",
            "value": best.images_per_s,
            "unit": "images/s",
            "baseline": base.images_per_s,
            "ratio": best.images_per_s / base.images_per_s,
            "target": TARGET_RATIO,
            **common,
        }
    )
    achieved = result["flops_per_step"] / statistics.median(best.seconds) / 1e9
    rows.append(
        {
            "name": f"train step {where}: GFLOP/s ({best.variant}) vs fp32 mm peak",
            "value": achieved,
            "unit": "GFLOP/s",
            "baseline": peaks["fp32"],
            "ratio": achieved / peaks["fp32"],
            "target": None,
            **common,
        }
    )
    rows.append(
        {
            "name": f"mm peak: bf16 ({result['bf16_mm_size']}^2) vs fp32 ({MM_SIZE}^2)",
            "value": peaks["bf16"],
            "unit": "GFLOP/s",
            "baseline": peaks["fp32"],
            "ratio": peaks["bf16"] / peaks["fp32"],
            "target": None,
            **common,
        }
    )
    return rows


def run() -> list[dict]:
    """Rows for the bench runner: name, value, unit, baseline, ratio, target, machine, date."""
    batch = int(os.environ.get("BENCH_TRAIN_BATCH", "2"))
    print(f"bench.train_step: paper network, batch {batch} (several minutes)", flush=True)
    with bench_threads() as threads:
        result = measure(batch, os.environ.get("BENCH_TRAIN_VARIANTS"))
        gflop = result["flops_per_step"] / 1e9
        print(f"  one step: {gflop:.0f} GFLOP ({gflop / batch:.0f} per image)", flush=True)
        return rows_from(result, threads)


def main() -> None:
    for r in run():
        print(f"{r['name']:<78} {r['value']:>9.4g} {r['unit']:<9} ratio {r['ratio']:.3g}")


if __name__ == "__main__":
    main()
