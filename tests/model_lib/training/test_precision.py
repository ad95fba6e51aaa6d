from __future__ import annotations

import pytest
import torch

from model_lib.training.precision import cpu_has_bf16_units, resolve_precision


def test_cpu_plans() -> None:
    fp32 = resolve_precision("fp32", "cpu")
    assert (fp32.dtype, fp32.channels_last, fp32.grad_scaler, fp32.name) == (
        None, False, False, "fp32",
    )  # fmt: skip
    bf16 = resolve_precision("bf16", "cpu")
    assert (bf16.dtype, bf16.channels_last, bf16.grad_scaler) == (torch.bfloat16, True, False)
    auto = resolve_precision("auto", "cpu")
    assert auto.name == ("bf16" if cpu_has_bf16_units() else "fp32")


def test_bad_requests() -> None:
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp8", "cpu")  # type: ignore[arg-type]


def test_autocast_region() -> None:
    a, b = torch.rand(4, 4), torch.rand(4, 4)
    with resolve_precision("bf16", "cpu").autocast():
        assert (a @ b).dtype == torch.bfloat16
    with resolve_precision("fp32", "cpu").autocast():
        assert (a @ b).dtype == torch.float32


def test_placement_and_images() -> None:
    plan = resolve_precision("bf16", "cpu")
    conv = plan.place(torch.nn.Conv2d(1, 2, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = plan.images(torch.rand(2, 1, 8, 6))
    assert x.is_contiguous(memory_format=torch.channels_last) and x.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_uses_amp() -> None:
    plan = resolve_precision("auto", "cuda")
    assert plan.dtype in (torch.bfloat16, torch.float16)
    assert plan.grad_scaler == (plan.dtype == torch.float16)
