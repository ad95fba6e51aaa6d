from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from model_lib.models import DualEncoderUNet, MTUNet, build_model
from model_lib.models.decoder import UNetDecoder
from model_lib.models.encoders import DenseNetEncoder, ResSEEncoder
from model_lib.models.heads import DenseNetHead, FusionClassifier, SaliencyHead
from tests.model_lib.models.cases import ARCHS, ODD_SIZES, WITH_DENSENET, tiny_config

DUAL_KEYS = {"logits", "saliency", "densenet_logits", "fusion_logits", "embedding"}


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {arch: build_model(tiny_config(arch)) for arch in ARCHS}


def _batch(hw: tuple[int, int], batch: int = 2) -> Tensor:
    return torch.rand(batch, 1, *hw, generator=torch.Generator().manual_seed(1))


def _reached(model: nn.Module, loss: Tensor) -> set[str]:
    """Names of the model's children whose parameters get a non-zero gradient from loss."""
    named = [(name, p) for name, child in model.named_children() for p in child.parameters()]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True)
    return {name for (name, _), g in zip(named, grads, strict=True) if g is not None and g.any()}


def _saliency_loss(log_p: Tensor) -> Tensor:
    target = torch.rand_like(log_p)
    target = target / target.sum(dim=(1, 2, 3), keepdim=True)
    return F.kl_div(log_p, target, reduction="batchmean")


@pytest.mark.parametrize("hw", ODD_SIZES, ids=str)
@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_returns_named_outputs(
    models: dict[str, nn.Module], arch: str, hw: tuple[int, int]
) -> None:
    model = models[arch].train()
    out = model(_batch(hw))
    if arch in WITH_DENSENET:
        assert isinstance(model, DualEncoderUNet)
        assert set(out) == DUAL_KEYS
        assert out["embedding"].shape == (2, 1024)
        assert out["densenet_logits"].shape == out["fusion_logits"].shape == (2, 3)
        assert out["logits"] is out["fusion_logits"]
    else:
        assert isinstance(model, MTUNet)
        assert set(out) == {"logits", "saliency"}
    assert out["logits"].shape == (2, 3)
    assert out["saliency"].shape == (2, 1, *hw)
    assert out["saliency"].dtype == torch.float32
    torch.testing.assert_close(out["saliency"].exp().sum(dim=(1, 2, 3)), torch.ones(2))


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_the_groups_each_output_depends_on(
    models: dict[str, nn.Module], arch: str
) -> None:
    model = models[arch].train()
    out = model(_batch((72, 56)))
    labels = torch.tensor([0, 2])
    saliency = _reached(model, _saliency_loss(out["saliency"]))
    if arch in WITH_DENSENET:
        unet = {"densenet", "encoder", "decoder"}
        assert saliency == unet | {"saliency_head"}
        assert _reached(model, F.cross_entropy(out["fusion_logits"], labels)) == unet | {
            "fusion_classifier"
        }
        assert _reached(model, F.cross_entropy(out["densenet_logits"], labels)) == {
            "densenet",
            "densenet_head",
        }
        assert _reached(model, out["embedding"].pow(2).sum()) == {"densenet"}
    else:
        assert saliency == {"encoder", "decoder", "saliency_head"}
        assert _reached(model, F.cross_entropy(out["logits"], labels)) == {
            "encoder",
            "decoder",
            "fusion_classifier",
        }


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_is_deterministic_and_memory_format_does_not_matter(
    models: dict[str, nn.Module], arch: str
) -> None:
    model = models[arch].eval()
    x = _batch((100, 84))
    with torch.no_grad():
        first, second = model(x), model(x)
        model.to(memory_format=torch.channels_last)
        try:
            channels_last = model(x.contiguous(memory_format=torch.channels_last))
        finally:
            model.to(memory_format=torch.contiguous_format)
    for key in first:
        assert torch.equal(first[key], second[key]), key
        torch.testing.assert_close(channels_last[key], first[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_autocast_channels_last_forward_backward(
    models: dict[str, nn.Module], arch: str
) -> None:
    model = models[arch].train().to(memory_format=torch.channels_last)
    model.zero_grad(set_to_none=True)
    x = _batch((72, 56)).contiguous(memory_format=torch.channels_last)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            labels = torch.tensor([1, 2])
            heads = [k for k in ("logits", "densenet_logits") if k in out]
            loss = _saliency_loss(out["saliency"]) + sum(
                F.cross_entropy(out[k], labels) for k in heads
            )
        loss.backward()
        grads = [p.grad for p in model.parameters()]
    finally:
        model.zero_grad(set_to_none=True)
        model.to(memory_format=torch.contiguous_format)
    assert out["saliency"].dtype == torch.float32
    torch.testing.assert_close(out["saliency"].exp().sum(dim=(1, 2, 3)), torch.ones(2))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_classifier_densenet_reports_the_densenet_head(models: dict[str, nn.Module]) -> None:
    model = build_model(tiny_config("dual_unet", classifier="densenet")).eval()
    with torch.no_grad():
        out = model(_batch((72, 56)))
    assert out["logits"] is out["densenet_logits"]
    assert not torch.equal(out["logits"], out["fusion_logits"])


def test_forward_densenet_matches_the_full_forward(models: dict[str, nn.Module]) -> None:
    model = models["dual_unet"].eval()
    x = _batch((72, 56))
    with torch.no_grad():
        full, branch = model(x), model.forward_densenet(x)
    assert set(branch) == {"densenet_logits", "embedding", "denseblock4"}
    for key in ("densenet_logits", "embedding"):
        torch.testing.assert_close(branch[key], full[key])
    torch.testing.assert_close(branch["denseblock4"].mean(dim=(2, 3)), full["embedding"])


@pytest.mark.parametrize(
    ("arch", "shape", "match"),
    [
        ("dual_unet", (2, 3, 64, 64), r"\(B, 1, H, W\)"),
        ("mt_unet", (1, 64, 64), r"\(B, 1, H, W\)"),
        ("dual_unet", (1, 1, 31, 64), "smaller than 32"),
        ("res_se_unet", (1, 1, 64, 15), "smaller than 16"),
    ],
)
def test_bad_input_shapes_are_refused(
    models: dict[str, nn.Module], arch: str, shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        models[arch](torch.rand(*shape))


def test_parts_that_do_not_fit_are_refused() -> None:
    encoder = ResSEEncoder(1, (4, 8, 16, 32, 64))
    with torch.device("meta"):
        densenet = DenseNetEncoder("densenet121")
    wrong = UNetDecoder((4, 8, 16, 32, 64), 1920)
    with pytest.raises(ValueError, match="1920-ch bottleneck"):
        DualEncoderUNet(
            densenet,
            encoder,
            wrong,
            SaliencyHead(4),
            DenseNetHead(1024),
            FusionClassifier(1024, 4),
        )
    with pytest.raises(ValueError, match="skips"):
        MTUNet(encoder, UNetDecoder((4, 8, 16), 64), SaliencyHead(4), FusionClassifier(64, 4))


PAPER_SHAPES = {
    "e1": (64, 320, 256),
    "e2": (128, 160, 128),
    "e3": (256, 80, 64),
    "e4": (512, 40, 32),
    "e5": (1024, 20, 16),
    "denseblock4": (1920, 10, 8),
    "d5": (512, 20, 16),
    "d4": (256, 40, 32),
    "d3": (128, 80, 64),
    "d2": (64, 160, 128),
    "d1": (64, 320, 256),
}
PAPER_PARAMETERS = {
    "densenet": 18_092_928,
    "encoder": 25_292_156,
    "decoder": 23_083_008,
    "saliency_head": 37_057,
    "densenet_head": 5_763,
    "fusion_classifier": 127_235,
}


def test_paper_model_has_the_papers_shapes_at_320x256() -> None:
    # Shapes only: the meta device runs the graph without computing anything.
    with torch.device("meta"):
        model = build_model("paper", pretrained=False)
    assert isinstance(model, DualEncoderUNet)
    seen: dict[str, tuple[int, ...]] = {}

    def record(name: str, module: nn.Module) -> None:
        module.register_forward_hook(lambda _m, _i, out: seen.__setitem__(name, out.shape[1:]))

    for i, stage in enumerate(model.encoder.stages):
        record(f"e{i + 1}", stage)
    for i, block in enumerate(model.decoder.blocks):
        record(f"d{len(model.decoder.blocks) - i}", block)
    record("denseblock4", model.densenet.features.denseblock4)
    out = model(torch.empty(1, 1, 320, 256, device="meta"))
    assert seen == PAPER_SHAPES
    assert out["saliency"].shape == (1, 1, 320, 256)
    assert out["logits"].shape == (1, 3)
    assert out["embedding"].shape == (1, 1920)
    counts = {
        name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()
    }
    assert counts == PAPER_PARAMETERS


def test_fusion_classifier_reads_what_a_hook_on_torchvisions_norm5_stores() -> None:
    """The authors hook ``features.norm5`` of torchvision's DenseNet and feed the stored tensor to
    their fusion head; torchvision's forward then ReLUs that tensor in place. Run that recipe on a
    real torchvision DenseNet with the same weights: our fusion input must be what the hook holds
    after the forward, i.e. relu(norm5), not norm5."""
    torch.manual_seed(0)
    model = build_model(tiny_config("dual_unet")).eval()
    # Break the ReLU's no-op case: with norm5's default affine parameters on random weights, a
    # good share of its outputs are negative; shift them to make sure.
    with torch.no_grad():
        model.densenet.features.norm5.bias.sub_(0.5)
    reference = torchvision.models.densenet121(weights=None).eval()
    reference.features.load_state_dict(model.densenet.features.state_dict())
    stored: dict[str, Tensor] = {}
    reference.features.norm5.register_forward_hook(lambda _m, _i, out: stored.update(norm5=out))
    x = _batch((72, 56))
    fused_inputs: list[Tensor] = []
    model.fusion_classifier.register_forward_hook(lambda _m, args, _o: fused_inputs.append(args[0]))
    with torch.no_grad():
        model(x)
        pre_relu = model.densenet.features.norm5(model.densenet(x)[-1])
        rgb = (x.expand(-1, 3, -1, -1) - model.densenet.mean) / model.densenet.std
        reference(rgb)
    assert (pre_relu < 0).any(), "the check needs negative norm5 values to tell the two apart"
    torch.testing.assert_close(fused_inputs[0], stored["norm5"])
    assert not torch.allclose(fused_inputs[0], pre_relu)
