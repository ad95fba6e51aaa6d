"""The switches that reproduce the authors' released code, each against their formulation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from model_lib.data.loader import BatchLoader, SplitArrays
from model_lib.losses import feature_map_triplet_loss, supervised_triplet_loss
from model_lib.presets import get_preset
from model_lib.training import StageSpec, fit_stage
from model_lib.training.chain import split_loaders
from model_lib.training.stages import stage_loss
from tests.model_lib.training.conftest import ToyNet


def authors_triplet_sum(maps: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Their CL/hzhu_learn.py loop: every (anchor, positive, negative) through
    ``nn.TripletMarginLoss(margin, p=2)`` on the 4-D maps, summed."""
    loss_fn = nn.TripletMarginLoss(margin=margin, p=2)
    total = maps.sum() * 0.0
    for i in range(maps.shape[0]):
        index = torch.arange(labels.shape[0])
        positives = ((labels == labels[i]) & (index != i)).nonzero(as_tuple=True)[0]
        negatives = (labels != labels[i]).nonzero(as_tuple=True)[0]
        for p in positives:
            for n in negatives:
                total = total + loss_fn(maps[i : i + 1], maps[p : p + 1], maps[n : n + 1])
    return total


CASES = [
    # (batch labels, map shape (C, h, w)): odd sizes, a class of one, a batch of one class.
    ([0, 1, 2, 0, 1, 2, 0], (5, 3, 2)),
    ([2, 2, 0, 1, 1, 1], (7, 2, 3)),
    ([0, 1, 1, 2], (4, 1, 5)),
    ([1, 1, 1], (3, 2, 2)),
]


@pytest.mark.parametrize(("labels", "shape"), CASES, ids=str)
def test_map_triplet_equals_the_authors_loop(labels: list[int], shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(len(labels))
    maps = torch.randn(len(labels), *shape, generator=gen, dtype=torch.float64) * 0.7
    y = torch.tensor(labels)
    ours_in = maps.clone().requires_grad_(True)
    theirs_in = maps.clone().requires_grad_(True)
    ours = feature_map_triplet_loss(ours_in, y, margin=1.0, reduction="sum")
    theirs = authors_triplet_sum(theirs_in, y)
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-5, atol=1e-6)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-6)
    n_triplets = sum(
        sum(1 for j, b in enumerate(labels) if b == a and j != i) * sum(b != a for b in labels)
        for i, a in enumerate(labels)
    )
    mean = feature_map_triplet_loss(maps, y, reduction="mean")
    torch.testing.assert_close(mean.double(), theirs.detach() / max(n_triplets, 1), rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def test_map_triplet_is_not_the_pooled_one() -> None:
    """The two formulations differ: the margin means something else in each."""
    maps = torch.randn(6, 4, 3, 2, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pooled = supervised_triplet_loss(maps.mean(dim=(2, 3)), y, reduction="sum")
    assert not torch.isclose(feature_map_triplet_loss(maps, y), pooled)


def test_paper_exact_pretraining_uses_the_authors_triplet() -> None:
    s1a = get_preset("paper-exact").stage("s1a")
    maps = torch.randn(6, 4, 3, 2, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    outputs = {"denseblock4": maps, "embedding": maps.mean(dim=(2, 3))}
    loss = stage_loss(s1a, outputs, {"label": y})
    torch.testing.assert_close(loss, authors_triplet_sum(maps, y))
    paper = stage_loss(get_preset("paper").stage("s1a"), outputs, {"label": y})
    torch.testing.assert_close(paper, supervised_triplet_loss(outputs["embedding"], y))


def test_map_triplet_needs_the_densenet_branch() -> None:
    with pytest.raises(ValueError, match="only branch 'densenet'"):
        StageSpec(name="x", trains=("densenet",), loss="triplet", batch_size=4, max_epochs=1,
                  triplet_features="map")  # fmt: skip


def _frozen_densenet_stage(**fields: object) -> StageSpec:
    return StageSpec(name="s2", trains=("encoder", "decoder", "saliency_head"), loss="kl",
                     batch_size=8, max_epochs=1, lr=1e-2, **fields)  # fmt: skip


def _bn_buffers(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def _params(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_frozen_batchnorm_mode(
    mode: str, splits: tuple[SplitArrays, SplitArrays], tmp_path: Path
) -> None:
    """'train' (the authors' net.train()): a frozen part's batch-norm statistics move with the
    batches while its weights stay; 'eval' (ours): neither moves."""
    torch.manual_seed(0)
    toy = ToyNet()
    bn_before, params_before = _bn_buffers(toy.densenet), _params(toy.densenet)
    train, val = splits
    fit_stage(toy, _frozen_densenet_stage(frozen_batchnorm=mode), BatchLoader(train, 8),
              BatchLoader(val, 8), checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    for name, value in _params(toy.densenet).items():
        torch.testing.assert_close(value, params_before[name], rtol=0, atol=0)
    moved = [not torch.equal(v, bn_before[k]) for k, v in _bn_buffers(toy.densenet).items()]
    assert any(moved) == (mode == "train")


def _first_batch_ids(spec: StageSpec, train: SplitArrays, val: SplitArrays) -> list[int]:
    loader, _ = split_loaders(train, val, seed=0)(spec)
    loader.set_epoch(1)
    return next(iter(loader))["index"].tolist()


def test_stage_shuffle_switch(splits: tuple[SplitArrays, SplitArrays]) -> None:
    train, val = splits
    in_order = _frozen_densenet_stage(shuffle=False)
    assert _first_batch_ids(in_order, train, val) == list(range(8))
    assert _first_batch_ids(_frozen_densenet_stage(), train, val) != list(range(8))
    assert not get_preset("paper-exact").stage("s3j").shuffle
    assert get_preset("paper").stage("s3").shuffle


def test_densenet_input_without_imagenet_normalisation_is_the_repeated_image() -> None:
    """The authors feed torchvision's DenseNet ``x.repeat(1, 3, 1, 1)`` as it is."""
    from torchvision.models import densenet121

    from model_lib.models.encoders import DenseNetEncoder

    torch.manual_seed(0)
    encoder = DenseNetEncoder("densenet121", input_norm="none").eval()
    reference = densenet121(weights=None).eval()
    reference.features.load_state_dict(encoder.features.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        ours = encoder.head_features(encoder(x)[-1])
        theirs = torch.relu(reference.features(x.repeat(1, 3, 1, 1)))
    torch.testing.assert_close(ours, theirs)
