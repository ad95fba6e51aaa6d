"""GPU training-step benchmark: the paper network at 320x256 with bf16 autocast on CUDA, as model
FLOP utilisation (MFU) against a bf16 matrix-multiply peak measured in the same run.

One step is the joint stage 3' (``s3j``, every part trained) as in :mod:`bench.train_step`:
forward, saliency KL + cross-entropy, backward, Adam. Variants: float32 NCHW (the baseline) and
what the trainer runs on CUDA (``resolve_precision("auto", "cuda")``: bf16 autocast,
channels-last), each at the paper's batch 8 and at a larger batch that fills the GPU. FLOPs of
one step are counted with ``FlopCounterMode``; MFU = FLOPs per second / peak of an 8192^3 bf16
``torch.mm``. On a machine without CUDA the case reports itself as skipped.

Environment: ``BENCH_GPU_BATCHES`` (default ``8,64``), ``BENCH_GPU_STEPS`` (timed steps, 10),
``BENCH_GPU_COMPILE=1`` adds the bf16 variant under ``torch.compile`` (minutes of compiling).
Run: ``python -m bench.gpu_step``.
"""

from __future__ import annotations

import os
import platform
from datetime import date

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.train_step import Variant, _Step, random_batch
from model_lib.models import build_model
from model_lib.presets import get_preset
from model_lib.training.precision import PrecisionPlan, resolve_precision

TARGET_MFU = 0.35
MM_SIZE = 8192


def _cuda_seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, timed with CUDA events."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def bf16_mm_peak_flops() -> float:
    """FLOP/s of an 8192^3 bf16 matrix product (3 warm-ups, median of 10)."""
    a = torch.randn(MM_SIZE, MM_SIZE, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MM_SIZE, MM_SIZE, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        torch.mm(a, b)
    torch.cuda.synchronize()
    return 2 * MM_SIZE**3 / _cuda_seconds(lambda: torch.mm(a, b), 10)


def step_flops_and_seconds(variant: Variant, batch: int, steps: int) -> tuple[float, float]:
    cfg = get_preset("paper")
    spec = cfg.stage("s3j")
    torch.manual_seed(0)
    step = _Step(build_model(cfg.model, pretrained=False), spec, variant)
    data = {k: v.cuda() for k, v in random_batch(batch, cfg.model.input_hw).items()}
    flops = 0.0
    if not variant.compile:  # the compiled step does the same arithmetic: counted eagerly
        counter = FlopCounterMode(display=False)
        with counter:
            step(data)
        flops = float(counter.get_total_flops())
    for _ in range(3):
        step(data)
    torch.cuda.synchronize()
    return flops, _cuda_seconds(lambda: step(data), steps)


def run() -> list[dict]:
    base = {"machine": "", "date": date.today().isoformat()}
    if not torch.cuda.is_available():
        print("  gpu step: skipped (no CUDA device)", flush=True)
        return [{"name": "gpu train step: skipped (no CUDA device)", "value": None, "unit": "",
                 "baseline": None, "ratio": None, "target": TARGET_MFU, **base}]  # fmt: skip
    torch.backends.cudnn.benchmark = True
    card = torch.cuda.get_device_name()
    base["machine"] = f"{card}, torch {torch.__version__}, {platform.python_version()}"
    peak = bf16_mm_peak_flops()
    print(f"  {card}: bf16 mm {MM_SIZE}^3 peak {peak / 1e12:.0f} TFLOP/s", flush=True)
    cuda = torch.device("cuda")
    auto = resolve_precision("auto", cuda)
    variants = {
        "fp32 NCHW": Variant("fp32 NCHW", PrecisionPlan(cuda, None, False, False)),
        "auto (bf16 autocast, channels_last)": Variant("auto", auto),
    }
    if os.environ.get("BENCH_GPU_COMPILE") == "1":
        variants["auto + torch.compile"] = Variant("auto + compile", auto, compile=True)
    batches = [int(b) for b in os.environ.get("BENCH_GPU_BATCHES", "8,64").split(",")]
    steps = int(os.environ.get("BENCH_GPU_STEPS", "10"))
    rows = []
    for batch in batches:
        measured = {}
        for name, variant in variants.items():
            flops, seconds = step_flops_and_seconds(variant, batch, steps)
            flops = flops or next(iter(measured.values()))[0]
            measured[name] = (flops, seconds)
            print(f"  b{batch} {name}: {seconds * 1e3:.1f} ms/step, "
                  f"{flops / seconds / 1e12:.1f} TFLOP/s", flush=True)  # fmt: skip
        fp32_s = measured.pop("fp32 NCHW")[1]
        for name, (flops, seconds) in measured.items():
            rows.append({"name": f"gpu train step paper 320x256 b{batch}: {name} vs fp32 NCHW",
                         "value": batch / seconds, "unit": "images/s",
                         "baseline": batch / fp32_s, "ratio": fp32_s / seconds, "target": None,
                         **base})  # fmt: skip
            rows.append({"name": f"gpu train step paper 320x256 b{batch}: {name} MFU",
                         "value": flops / seconds / 1e12, "unit": "TFLOP/s",
                         "baseline": peak / 1e12, "ratio": flops / seconds / peak,
                         "target": TARGET_MFU, **base})  # fmt: skip
    return rows


def main() -> None:
    for row in run():
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        print(f"{row['name']}: {row['value']} {row['unit']} (ratio {ratio})")


if __name__ == "__main__":
    main()
