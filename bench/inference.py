"""Inference benchmark: one 320x256 image through the paper network, eager against exported.

The baseline is how serving runs the network today: eager, float32, NCHW, ``inference_mode``.
The candidates are exported forms of the same weights:

- TorchScript: ``jit.trace`` of the channels-last model, ``jit.freeze`` (folds batch norm into
  the convolutions), then ``jit.optimize_for_inference`` (oneDNN layouts, fused ReLUs);
- ``torch.export``: the exported program's module, run as is;
- ONNX Runtime is not a candidate: ``onnx`` and ``onnxruntime`` are not in the lock file (the
  run says whether they are installed).

A candidate counts only if both outputs (``logits`` and the ``saliency`` log-probabilities) match
eager within ``TOLERANCE``. After warm-up (TorchScript profiles its first runs), each candidate
is screened with ``SCREEN`` runs; eager and the fastest candidate then run ``REPEATS`` times,
interleaved so that both see the same background load. A forward pass takes seconds on 2 CPU
cores, hence the small number of repeats (``BENCH_INFER_REPEATS`` sets it).

``run()`` returns rows for the bench runner: p50 and p95 latency of the fastest candidate (value)
against eager (baseline), the screening medians of the others, and the largest output difference.
Run: ``python -m bench.inference``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bench.train_step import bench_threads, machine_fields, mm_peak_gflops
from model_lib.models import build_model
from model_lib.presets import get_preset

Forward = Callable[[Tensor], dict[str, Tensor]]

TARGET_RATIO = 1.5
TOLERANCE = 1e-3
OUTPUTS = ("logits", "saliency")
WARMUP = 2
SCREEN = 2
DEFAULT_REPEATS = 10


def torchscript(model: nn.Module, example: Tensor, *, optimize: bool) -> Forward:
    """Trace ``model`` (eval) on channels-last ``example``, freeze it, optionally optimise it for
    inference; the returned forward takes NCHW images like the model."""
    model = model.to(memory_format=torch.channels_last)
    example = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), warnings.catch_warnings():
        # trace warns that it is deprecated and that shape checks become constants; the
        # outputs are compared with eager before any timing.
        warnings.simplefilter("ignore")
        module = torch.jit.freeze(torch.jit.trace(model, example, strict=False, check_trace=False))
        if optimize:
            module = torch.jit.optimize_for_inference(module)
    return lambda x: module(x.contiguous(memory_format=torch.channels_last))


def exported(model: nn.Module, example: Tensor) -> Forward:
    """``torch.export.export(model, (example,))``, run through its ``module()``."""
    return torch.export.export(model, (example,)).module()


def onnxruntime_missing() -> str | None:
    """Why there is no ONNX Runtime candidate: the packages that are not installed, else None."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


def candidates(fresh: Callable[[], nn.Module], example: Tensor) -> dict[str, Forward]:
    """Every exported path, by name, each built from its own copy ``fresh()`` of the model
    (TorchScript converts its copy to channels-last); build times are printed."""
    builders: dict[str, Callable[[], Forward]] = {
        "TorchScript trace+freeze (channels_last)": lambda: torchscript(
            fresh(), example, optimize=False
        ),
        "TorchScript trace+freeze+optimize_for_inference": lambda: torchscript(
            fresh(), example, optimize=True
        ),
        "torch.export + run": lambda: exported(fresh(), example),
    }
    built = {}
    for name, build in builders.items():
        start = time.perf_counter()
        built[name] = build()
        print(f"  built {name} in {time.perf_counter() - start:.1f} s", flush=True)
    return built


def _seconds(fn: Forward, x: Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest absolute difference over the compared outputs."""
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in OUTPUTS)


def measure(repeats: int) -> dict:
    """Build, check, screen, then time eager and the fastest matching candidate interleaved."""
    cfg = get_preset("paper").model
    torch.manual_seed(0)
    model = build_model(cfg, pretrained=False).eval()  # timing: any weights do
    example = torch.rand(1, 1, *cfg.input_hw, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        reference = model(example)
        counter = FlopCounterMode(display=False)
        with counter:
            model(example)

    def fresh() -> nn.Module:
        copy = build_model(cfg, pretrained=False).eval()
        copy.load_state_dict(model.state_dict())
        return copy

    paths = candidates(fresh, example)

    def eager(x: Tensor) -> dict[str, Tensor]:
        return model(x)

    diffs, screen = {}, {}
    with torch.inference_mode():
        for name, fn in paths.items():
            outputs = [fn(example) for _ in range(WARMUP)]
            diffs[name] = max(max_difference(reference, out) for out in outputs)
            screen[name] = statistics.median(_seconds(fn, example) for _ in range(SCREEN))
            ok = "ok" if diffs[name] <= TOLERANCE else "REJECTED"
            print(f"  {name}: max diff {diffs[name]:.2e} ({ok}), "
                  f"screen {1e3 * screen[name]:.0f} ms", flush=True)  # fmt: skip
        valid = [n for n in paths if diffs[n] <= TOLERANCE]
        if not valid:
            raise RuntimeError(f"no exported path matches eager within {TOLERANCE}: {diffs}")
        best = min(valid, key=screen.__getitem__)
        times: dict[str, list[float]] = {"eager": [], best: []}
        for i in range(repeats):
            # Alternate which goes first so that neither always runs right after the other.
            order = ("eager", best) if i % 2 == 0 else (best, "eager")
            for name in order:
                times[name].append(_seconds(eager if name == "eager" else paths[best], example))
            print(f"  repeat {i + 1}/{repeats}: eager {times['eager'][-1]:.2f} s, "
                  f"{best} {times[best][-1]:.2f} s", flush=True)  # fmt: skip
    peak = mm_peak_gflops(torch.float32, repeats=3)
    return {"best": best, "times": times, "diffs": diffs, "screen": screen,
            "gflop": counter.get_total_flops() / 1e9, "fp32_peak": peak}  # fmt: skip


def _percentiles(seconds: list[float]) -> tuple[float, float]:
    p50, p95 = np.percentile(np.asarray(seconds) * 1e3, [50, 95])
    return float(p50), float(p95)


def run() -> list[dict]:
    """Rows for the bench runner: name, value, unit, baseline, ratio, target, machine, date."""
    repeats = int(os.environ.get("BENCH_INFER_REPEATS", DEFAULT_REPEATS))
    print(f"bench.inference: paper network, 1x320x256, {repeats} repeats", flush=True)
    skipped = onnxruntime_missing()
    if skipped:
        print(f"  no ONNX Runtime candidate: {skipped}", flush=True)
    with bench_threads() as threads:
        result = measure(repeats)
    best, times = result["best"], result["times"]
    common = machine_fields(threads)
    eager_p = _percentiles(times["eager"])
    best_p = _percentiles(times[best])
    rows = [
        {
            "name": f"inference {q} 1x320x256 ({repeats} runs): {best} vs eager",
            "value": fast,
            "unit": "ms",
            "baseline": slow,
            "ratio": slow / fast,
            "target": TARGET_RATIO,
            **common,
        }
        for q, fast, slow in zip(("p50", "p95"), best_p, eager_p, strict=True)
    ]
    rows += [
        {
            "name": f"inference screen ({SCREEN} runs): {name}",
            "value": 1e3 * seconds,
            "unit": "ms",
            "baseline": eager_p[0],
            "ratio": eager_p[0] / (1e3 * seconds),
            "target": None,
            **common,
        }
        for name, seconds in result["screen"].items()
        if name != best
    ]
    # How close eager already is to the fp32 matrix-multiply peak bounds what any fp32 path
    # can gain on this CPU.
    rows.append(
        {
            "name": f"inference eager GFLOP/s ({result['gflop']:.0f} GFLOP a forward) vs fp32 "
            "mm peak",
            "value": result["gflop"] / (eager_p[0] / 1e3),
            "unit": "GFLOP/s",
            "baseline": result["fp32_peak"],
            "ratio": result["gflop"] / (eager_p[0] / 1e3) / result["fp32_peak"],
            "target": None,
            **common,
        }
    )
    rows.append(
        {
            "name": f"inference max |{best} - eager| (logits, saliency)",
            "value": result["diffs"][best],
            "unit": "abs",
            "baseline": None,
            "ratio": None,
            "target": TOLERANCE,
            **common,
        }
    )
    return rows


def main() -> None:
    for r in run():
        ratio = "" if r["ratio"] is None else f" ratio {r['ratio']:.2f}"
        print(f"{r['name']:<90} {r['value']:>10.4g} {r['unit']}{ratio}")


if __name__ == "__main__":
    main()
