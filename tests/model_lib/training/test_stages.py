from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from model_lib.losses import (
    ProjectionHead,
    UncertaintyWeightedLoss,
    classification_ce,
    saliency_kl,
    supcon_loss,
    supervised_triplet_loss,
)
from model_lib.training.stages import (
    ALL_PARTS,
    PAPER_STAGES,
    StageSpec,
    frozen_parts,
    make_stage_module,
    stage_loss,
)
from tests.model_lib.training.conftest import ToyNet


def test_the_paper_table() -> None:
    rows = {s.name: (s.trains, s.loss, s.batch_size, s.max_epochs, s.enabled) for s in PAPER_STAGES}
    assert rows == {
        "s1a": (("densenet",), "triplet", 32, 50, True),
        "s1b": (("densenet", "densenet_head"), "ce_densenet", 16, 10, True),
        "s2": (("encoder", "decoder", "saliency_head"), "kl", 16, 50, True),
        "s3": (("fusion_classifier",), "ce_fusion", 6, 40, True),
        "s3j": (ALL_PARTS, "joint", 6, 40, False),
    }
    for s in PAPER_STAGES:
        assert (s.lr, s.lr_factor, s.lr_patience, s.min_lr) == (1e-4, 0.1, 40, 1e-8)
        assert s.early_stopping_patience == 2 * 40 + 3
    assert [s.report_head for s in PAPER_STAGES] == [None, "densenet", None, "fusion", "fusion"]


def test_frozen_parts_are_the_rest() -> None:
    model = ToyNet()
    assert frozen_parts(model, PAPER_STAGES[2]) == (
        "densenet",
        "densenet_head",
        "fusion_classifier",
    )
    assert frozen_parts(model, PAPER_STAGES[4]) == ()
    bad = PAPER_STAGES[2].model_copy(update={"trains": ("res_se_encoder",)})
    with pytest.raises(ValueError, match=r"stage s2: trains \['res_se_encoder'\].*'encoder'"):
        frozen_parts(model, bad)


BASE = {"name": "x", "trains": ["encoder"], "batch_size": 2, "max_epochs": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"loss": "ce_fusion", "head": "densenet"}, "loss ce_fusion trains the fusion head"),
        ({"loss": "joint"}, "joint loss needs a head"),
        ({"loss": "kl", "branch": "densenet"}, "branch 'densenet' has no kl output"),
        ({"loss": "ce_densenet", "branch": "densenet", "head": "fusion"}, "trains the densenet"),
        ({"loss": "kl", "trains": ["encoder", "encoder"]}, "lists a submodule twice"),
        ({"loss": "kl", "trains": []}, "at least 1 item"),
        ({"loss": "kl", "name": "a/b"}, "should match pattern"),
        ({"loss": "kl", "batch_size": 0}, "greater than or equal to 1"),
        ({"loss": "focal"}, "loss"),
        ({"loss": "kl", "epochs": 3}, "Extra inputs are not permitted"),
    ],
)
def test_inconsistent_specs_are_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StageSpec(**{**BASE, **fields})


def test_stage_modules() -> None:
    model = ToyNet(num_features=8)
    supcon = PAPER_STAGES[0].model_copy(update={"loss": "supcon", "projection_dim": 5})
    head = make_stage_module(supcon, model)
    assert isinstance(head, ProjectionHead)
    assert head(torch.zeros(2, 8)).shape == (2, 5)
    assert isinstance(make_stage_module(PAPER_STAGES[4], model), UncertaintyWeightedLoss)
    assert make_stage_module(PAPER_STAGES[2], model) is None


def test_stage_loss_reads_the_right_outputs() -> None:
    torch.manual_seed(0)
    model = ToyNet()
    x = torch.rand(6, 1, 16, 12)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    target = torch.rand(6, 1, 16, 12)
    batch = {"label": labels, "saliency": target / target.sum(dim=(2, 3), keepdim=True)}
    out = model(x)
    by_name = {s.name: s for s in PAPER_STAGES}
    torch.testing.assert_close(
        stage_loss(by_name["s1a"], out, batch), supervised_triplet_loss(out["embedding"], labels)
    )
    torch.testing.assert_close(
        stage_loss(by_name["s1b"], out, batch), classification_ce(out["densenet_logits"], labels)
    )
    kl = saliency_kl(out["saliency"], batch["saliency"])
    torch.testing.assert_close(stage_loss(by_name["s2"], out, batch), kl)
    ce = classification_ce(out["fusion_logits"], labels)
    torch.testing.assert_close(stage_loss(by_name["s3"], out, batch), ce)
    joint = UncertaintyWeightedLoss()
    torch.testing.assert_close(stage_loss(by_name["s3j"], out, batch, joint), joint(ce, kl))
    supcon = by_name["s1a"].model_copy(update={"loss": "supcon"})
    head = make_stage_module(supcon, model)
    torch.testing.assert_close(
        stage_loss(supcon, out, batch, head), supcon_loss(head(out["embedding"]), labels, 0.07)
    )
