from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model_lib.losses import (
    ProjectionHead,
    UncertaintyWeightedLoss,
    classification_ce,
    saliency_kl,
    supcon_loss,
    supervised_triplet_loss,
)


def naive_triplet(x: torch.Tensor, labels: list[int], margin: float) -> float:
    total, count = 0.0, 0
    n = len(labels)
    for a in range(n):
        for p in range(n):
            for q in range(n):
                if p == a or labels[p] != labels[a] or labels[q] == labels[a]:
                    continue
                d_ap = torch.linalg.vector_norm(x[a] - x[p]).item()
                d_an = torch.linalg.vector_norm(x[a] - x[q]).item()
                total += max(0.0, d_ap - d_an + margin)
                count += 1
    return total / count if count else 0.0


def naive_supcon(x: torch.Tensor, labels: list[int], temperature: float) -> float:
    z = x.double() / x.double().norm(dim=1, keepdim=True)
    per_anchor = []
    n = len(labels)
    for i in range(n):
        positives = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(z[i] @ z[a] / temperature) for a in range(n) if a != i)
        terms = [math.log(math.exp(z[i] @ z[p] / temperature) / denominator) for p in positives]
        per_anchor.append(-sum(terms) / len(terms))
    return sum(per_anchor) / len(per_anchor) if per_anchor else 0.0


def random_maps(seed: int, shape: tuple[int, ...] = (3, 1, 5, 7)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    log_pred = torch.log_softmax(torch.randn(shape, generator=g).flatten(1), dim=1).view(shape)
    target = torch.rand(shape, generator=g)
    return log_pred, target


# --- saliency KL ---------------------------------------------------------------------------


def test_saliency_kl_matches_torch_kl_div_batchmean() -> None:
    log_pred, target = random_maps(0)
    expected = F.kl_div(
        log_pred.flatten(1),
        target.flatten(1) / target.flatten(1).sum(1, keepdim=True),
        reduction="batchmean",
    )
    got = saliency_kl(log_pred, target)
    assert got.shape == ()
    assert torch.allclose(got, expected, atol=1e-6)


def test_saliency_kl_by_hand() -> None:
    # One 1x2 image: pred (0.25, 0.75), target (1, 3) -> t = (0.25, 0.75) -> KL 0;
    # second image: pred (0.5, 0.5), target (1, 0) -> KL = log(1 / 0.5) = log 2. batchmean: /2.
    log_pred = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log().view(2, 1, 1, 2)
    target = torch.tensor([[1.0, 3.0], [1.0, 0.0]]).view(2, 1, 1, 2)
    assert saliency_kl(log_pred, target).item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_saliency_kl_ignores_target_scale_and_is_zero_on_match() -> None:
    log_pred, target = random_maps(1)
    assert torch.allclose(saliency_kl(log_pred, target), saliency_kl(log_pred, 37.0 * target))
    matched = log_pred.exp() * 5.0
    assert saliency_kl(log_pred, matched).abs().item() < 1e-6


def test_saliency_kl_gradient_flows_to_prediction() -> None:
    logits = torch.randn(2, 1, 4, 4, requires_grad=True)
    log_pred = torch.log_softmax(logits.flatten(1), dim=1).view_as(logits)
    saliency_kl(log_pred, torch.rand(2, 1, 4, 4)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("log_pred_shape", "target_shape", "match"),
    [
        ((2, 1, 4, 4), (2, 1, 4, 5), "same shape"),
        ((2, 4, 4), (2, 4, 4), "same shape"),
        ((2, 3, 4, 4), (2, 3, 4, 4), "same shape"),
    ],
)
def test_saliency_kl_rejects_bad_shapes(
    log_pred_shape: tuple[int, ...], target_shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        saliency_kl(torch.zeros(log_pred_shape), torch.ones(target_shape))


def test_saliency_kl_rejects_all_zero_and_negative_targets() -> None:
    log_pred, target = random_maps(2)
    target[1] = 0.0
    with pytest.raises(ValueError, match=r"all zero for image\(s\) \[1\]"):
        saliency_kl(log_pred, target)
    target[1] = 1.0
    target[0, 0, 0, 0] = -0.1
    with pytest.raises(ValueError, match="negative"):
        saliency_kl(log_pred, target)


# --- cross-entropy -------------------------------------------------------------------------


def test_classification_ce_matches_torch() -> None:
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    assert torch.allclose(classification_ce(logits, labels), F.cross_entropy(logits, labels))


def test_classification_ce_by_hand() -> None:
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]])
    # -log(1/3) and -log(3/5)
    expected = (math.log(3.0) - math.log(0.6)) / 2
    got = classification_ce(logits, torch.tensor([1, 0]))
    assert got.item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (torch.tensor([0, 1]), r"shape \(3,\)"),
        (torch.tensor([[0, 1, 2]]), r"shape \(3,\)"),
        (torch.tensor([0.0, 1.0, 2.0]), "integer"),
    ],
)
def test_classification_ce_rejects_bad_labels(labels: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        classification_ce(torch.zeros(3, 3), labels)


# --- uncertainty-weighted joint loss -------------------------------------------------------


def test_uncertainty_loss_at_init_and_its_gradient() -> None:
    loss_fn = UncertaintyWeightedLoss()
    ce, kl = torch.tensor(0.9), torch.tensor(2.0)
    loss = loss_fn(ce, kl)
    assert loss.item() == pytest.approx(0.9 + math.log(2) + 1.0 + math.log(2), abs=1e-6)
    loss.backward()
    # d/ds [ce e^{-2s} + log(e^s + 1)] at s = 0 is -2 ce + 1/2.
    assert loss_fn.log_sigma_c.grad.item() == pytest.approx(-2 * 0.9 + 0.5, abs=1e-6)
    assert loss_fn.sigmas == {"sigma_c": 1.0, "sigma_s": 1.0}


def test_uncertainty_loss_formula_at_other_sigmas() -> None:
    loss_fn = UncertaintyWeightedLoss(learn_saliency_sigma=True)
    with torch.no_grad():
        loss_fn.log_sigma_c.fill_(math.log(2.0))
        loss_fn.log_sigma_s.fill_(math.log(0.5))
    ce, kl = 1.3, 0.7
    expected = ce / 4 + math.log(3.0) + kl / (2 * 0.25) + math.log(1.5)
    got = loss_fn(torch.tensor(ce), torch.tensor(kl))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert loss_fn.sigmas["sigma_c"] == pytest.approx(2.0)
    assert loss_fn.sigmas["sigma_s"] == pytest.approx(0.5)


def test_saliency_sigma_is_fixed_unless_asked() -> None:
    fixed = UncertaintyWeightedLoss()
    learnt = UncertaintyWeightedLoss(learn_saliency_sigma=True)
    assert [n for n, _ in fixed.named_parameters()] == ["log_sigma_c"]
    assert sorted(n for n, _ in learnt.named_parameters()) == ["log_sigma_c", "log_sigma_s"]
    # The fixed one still travels with a checkpoint.
    assert set(fixed.state_dict()) == {"log_sigma_c", "log_sigma_s"}


def test_uncertainty_loss_training_moves_sigma_c_to_its_optimum() -> None:
    # For a constant CE the optimum of ce e^{-2s} + softplus(s) solves sigmoid(s) = 2 ce e^{-2s}.
    # Plain gradient descent by hand: building a torch.optim optimiser costs seconds of imports.
    loss_fn = UncertaintyWeightedLoss()
    ce, kl = torch.tensor(2.0), torch.tensor(1.0)
    for _ in range(100):
        (grad,) = torch.autograd.grad(loss_fn(ce, kl), [loss_fn.log_sigma_c])
        with torch.no_grad():
            loss_fn.log_sigma_c -= 0.5 * grad
    s = loss_fn.log_sigma_c.item()
    assert 1 / (1 + math.exp(-s)) == pytest.approx(2 * 2.0 * math.exp(-2 * s), rel=1e-3)
    assert loss_fn.sigmas["sigma_s"] == 1.0


def test_uncertainty_loss_rejects_unreduced_losses() -> None:
    with pytest.raises(ValueError, match="0-d"):
        UncertaintyWeightedLoss()(torch.ones(4), torch.tensor(1.0))


# --- supervised triplet loss ---------------------------------------------------------------


@pytest.mark.parametrize("batch", range(2, 13))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_naive_loop(batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(100 * batch + seed)
    x = torch.randn(batch, 5, generator=g)
    labels = torch.randint(0, 3, (batch,), generator=g)
    margin = [1.0, 0.3, 2.5][seed]
    got = supervised_triplet_loss(x, labels, margin=margin)
    expected = naive_triplet(x, labels.tolist(), margin)
    assert got.item() == pytest.approx(expected, abs=1e-5)


def test_triplet_by_hand() -> None:
    # On a line: a=0 (class 0), p=1 (class 0), n=3 (class 1). Triplets with margin 1:
    # (0,1,n): 1 - 3 + 1 -> 0;  (1,0,n): 1 - 2 + 1 -> 0;  (n, -, -): no positive. Mean 0.
    # Move n to 1.5: (0,1,n): 1 - 1.5 + 1 = 0.5;  (1,0,n): 1 - 0.5 + 1 = 1.5. Mean 1.
    x = torch.tensor([[0.0], [1.0], [1.5]])
    labels = torch.tensor([0, 0, 1])
    assert supervised_triplet_loss(x, labels).item() == pytest.approx(1.0)
    x[2, 0] = 3.0
    assert supervised_triplet_loss(x, labels).item() == pytest.approx(0.0)


def test_triplet_flattens_feature_maps() -> None:
    x = torch.randn(6, 4, 3, 2)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    got = supervised_triplet_loss(x, labels)
    assert torch.allclose(got, supervised_triplet_loss(x.flatten(1), labels))


@pytest.mark.parametrize("labels", [[1, 1, 1, 1], [0, 1, 2, 3]], ids=["one-class", "singletons"])
def test_triplet_without_valid_triplets_is_zero_and_differentiable(labels: list[int]) -> None:
    x = torch.randn(4, 3, requires_grad=True)
    loss = supervised_triplet_loss(x, torch.tensor(labels))
    assert loss.item() == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


def test_triplet_gradient_is_finite_with_duplicate_embeddings() -> None:
    base = torch.randn(3, 4)
    x = torch.cat([base, base]).requires_grad_()
    # A wide margin keeps every hinge active, so the zero anchor-positive distances are used.
    loss = supervised_triplet_loss(x, torch.tensor([0, 1, 2, 0, 1, 2]), margin=100.0)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert loss.item() > 0


def test_triplet_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError, match=r"labels: expected shape \(4,\)"):
        supervised_triplet_loss(torch.zeros(4, 2), torch.tensor([0, 1, 2]))


# --- SupCon --------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("seed", [0, 1])
def test_supcon_matches_naive(batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(10 * batch + seed)
    x = torch.randn(batch, 6, generator=g)
    labels = torch.randint(0, 3, (batch,), generator=g)
    temperature = [0.07, 0.5][seed]
    got = supcon_loss(x, labels, temperature=temperature)
    expected = naive_supcon(x, labels.tolist(), temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_supcon_by_hand() -> None:
    # Unit vectors: anchors 0 and 1 of class 0 identical, 2 opposite (class 1, no positive).
    # For anchor 0: logits to 1 and 2 are 1/T and -1/T; L = -log(e^{1/T} / (e^{1/T} + e^{-1/T})).
    t = 0.5
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])
    expected = math.log1p(math.exp(-2 / t))
    got = supcon_loss(x, torch.tensor([0, 0, 1]), temperature=t)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_supcon_without_positives_is_zero_and_differentiable() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(x, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_supcon_rejects_bad_temperature_and_shapes() -> None:
    with pytest.raises(ValueError, match="temperature"):
        supcon_loss(torch.randn(3, 4), torch.tensor([0, 0, 1]), temperature=0.0)
    with pytest.raises(ValueError, match=r"features \(B, D\)"):
        supcon_loss(torch.randn(3, 4, 2), torch.tensor([0, 0, 1]))


def test_projection_head_shapes_and_training_signal() -> None:
    head = ProjectionHead(in_dim=10, hidden=8, out_dim=4)
    x = torch.randn(6, 10)
    out = head(x)
    assert out.shape == (6, 4)
    supcon_loss(out, torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# --- mixed precision -----------------------------------------------------------------------


def _losses_on(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        "kl": saliency_kl(inputs["log_pred"], inputs["target"]),
        "ce": classification_ce(inputs["logits"], inputs["labels"]),
        "triplet": supervised_triplet_loss(inputs["emb"], inputs["labels"]),
        "supcon": supcon_loss(inputs["emb"], inputs["labels"]),
        "joint": UncertaintyWeightedLoss()(
            classification_ce(inputs["logits"], inputs["labels"]),
            saliency_kl(inputs["log_pred"], inputs["target"]),
        ),
    }


def test_losses_under_bfloat16_autocast_are_float32_and_close() -> None:
    g = torch.Generator().manual_seed(0)
    log_pred, target = random_maps(3, shape=(4, 1, 16, 12))
    fp32 = {
        "log_pred": log_pred,
        "target": target,
        "logits": torch.randn(8, 3, generator=g),
        "emb": torch.randn(8, 32, generator=g),
        "labels": torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]),
    }
    half = {k: v if k == "labels" else v.to(torch.bfloat16) for k, v in fp32.items()}
    reference = _losses_on(fp32)
    rounded_reference = _losses_on({k: v if k == "labels" else v.float() for k, v in half.items()})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = _losses_on(half)
    for name, value in mixed.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        # Only the inputs were rounded: the arithmetic itself ran in float32.
        assert torch.allclose(value, rounded_reference[name], rtol=1e-5, atol=1e-6), name
        assert torch.allclose(value, reference[name], rtol=2e-2, atol=2e-2), name


def test_losses_on_autocast_outputs_backpropagate() -> None:
    layer = torch.nn.Linear(6, 8)
    x = torch.randn(6, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = layer(x)
        assert emb.dtype == torch.bfloat16
        loss = supervised_triplet_loss(emb, labels) + supcon_loss(emb, labels)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
