"""Numeric precision for training and inference: float32, or autocast to bfloat16 / float16.

``"auto"`` picks what pays on the hardware: on CUDA, autocast to bfloat16 where the GPU has it
(else float16 with a gradient scaler); on CPU, bfloat16 with channels-last tensors only where
the CPU has bfloat16 matrix units (AVX512-BF16 or AMX), since elsewhere bfloat16 is emulated and
slower than float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]


@dataclass(frozen=True)
class PrecisionPlan:
    """How to run one device: the autocast dtype (``None``: plain float32), whether tensors go
    channels-last, and whether float16 gradients need a scaler."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool
    grad_scaler: bool

    @property
    def name(self) -> str:
        """``"fp32"``, ``"bf16"`` or ``"fp16"``."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> AbstractContextManager[object]:
        """The autocast region for a forward pass (a no-op for float32)."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move ``module`` to the device (channels-last when the plan says so), in place."""
        if self.channels_last:
            return module.to(self.device, memory_format=torch.channels_last)
        return module.to(self.device)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch (B, C, H, W) moved to the device in the plan's memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16) through oneDNN."""
    caps = torch.cpu.get_capabilities()
    native = bool(caps.get("avx512_bf16", False) or caps.get("amx_bf16", False))
    return native and torch.backends.mkldnn.is_available()


def resolve_precision(precision: PrecisionName, device: torch.device | str) -> PrecisionPlan:
    """The plan for ``precision`` on ``device``.

    Raises:
        ValueError: an unknown name, or float16 asked for on CPU (autocast there is bfloat16).
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    if precision == "auto":
        if on_cuda:
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            precision = "bf16" if cpu_has_bf16_units() else "fp32"
    if precision == "fp32":
        return PrecisionPlan(device, None, channels_last=False, grad_scaler=False)
    if precision == "bf16":
        # oneDNN's bfloat16 convolutions want NHWC; cuDNN's tensor-core kernels do too.
        return PrecisionPlan(device, torch.bfloat16, channels_last=True, grad_scaler=False)
    if precision == "fp16":
        if not on_cuda:
            raise ValueError(f"precision 'fp16' needs a CUDA device, got {device}; use 'bf16'")
        return PrecisionPlan(device, torch.float16, channels_last=True, grad_scaler=True)
    raise ValueError(f"precision must be one of auto, fp32, bf16, fp16; got {precision!r}")
