from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from model_lib.data.loader import BatchLoader
from model_lib.training import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    Callback,
    FitResult,
    StageSpec,
    fit_stage,
    load_checkpoint,
)
from tests.model_lib.training.conftest import ToyNet

Loaders = Callable[..., tuple[BatchLoader, BatchLoader]]
ALL = ("densenet", "densenet_head", "encoder", "decoder", "saliency_head", "fusion_classifier")


def spec(**fields: object) -> StageSpec:
    base: dict[str, object] = {
        "name": "s",
        "trains": ("encoder", "decoder", "saliency_head"),
        "loss": "kl",
        "batch_size": 8,
        "max_epochs": 4,
        "lr": 1e-2,
    }
    return StageSpec(**{**base, **fields})


def fit(model: nn.Module, stage: StageSpec, loaders: Loaders, tmp: Path, **kw: object) -> FitResult:
    train, val = loaders(stage.batch_size)
    kw = {"checkpoint_dir": tmp, "progress": False, "precision": "fp32", **kw}
    return fit_stage(model, stage, train, val, **kw)


def snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class Recorder:
    def __init__(self, model: nn.Module | None = None, best: Path | None = None) -> None:
        self.starts: list[tuple[str, int]] = []
        self.epochs: list[tuple[str, int, dict[str, float]]] = []
        self.ends: list[FitResult] = []
        self.model, self.best = model, best
        self.equals_best: list[bool] = []

    def on_stage_start(self, spec: StageSpec, start_epoch: int) -> None:
        self.starts.append((spec.name, start_epoch))

    def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        self.epochs.append((stage, epoch, dict(metrics)))
        if self.model is not None:
            best = load_checkpoint(self.best)["model"]
            self.equals_best.append(same(self.model.state_dict(), best))

    def on_stage_end(self, result: FitResult) -> None:
        self.ends.append(result)


class Interrupt(Exception):
    pass


class StopAt(Recorder):
    """Interrupts training after an epoch, as a kill would."""

    def __init__(self, epoch: int, stage: str = "s") -> None:
        super().__init__()
        self.stop_at = (stage, epoch)

    def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        super().on_epoch_end(stage, epoch, metrics)
        if (stage, epoch) == self.stop_at:
            raise Interrupt


@pytest.mark.parametrize(
    ("loss", "trains", "branch"),
    [
        ("kl", ("encoder", "decoder", "saliency_head"), "full"),
        ("ce_densenet", ("densenet", "densenet_head"), "densenet"),
        ("ce_fusion", ALL, "full"),
        ("triplet", ("densenet",), "densenet"),
        ("supcon", ("densenet",), "densenet"),
        ("joint", ALL, "full"),
    ],
)
def test_losses_fall_on_a_learnable_problem(
    toy: ToyNet, loaders: Loaders, tmp_path: Path, loss: str, trains: tuple[str, ...], branch: str
) -> None:
    head = "fusion" if loss == "joint" else None
    stage = spec(loss=loss, trains=trains, branch=branch, head=head, max_epochs=6)
    result = fit(toy, stage, loaders, tmp_path)
    train = [h["train_loss"] for h in result.history]
    val = [h["val_loss"] for h in result.history]
    assert len(result.history) == 6 and result.stopped_reason == "max_epochs"
    # The joint loss has a floor of 2 log 2 at sigma = 1, hence the loose ratio.
    assert train[-1] < 0.85 * train[0]
    assert val[-1] < val[0]


def test_frozen_parts_and_their_batch_norm_statistics_do_not_move(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    frozen = ("densenet", "densenet_head", "fusion_classifier")
    before = {name: snapshot(toy.get_submodule(name)) for name in ALL}
    fit(toy, spec(), loaders, tmp_path)
    for name in ALL:
        after = toy.get_submodule(name).state_dict()
        assert same(before[name], after) == (name in frozen), name
    # The frozen DenseNet has batch norms: their running statistics are part of the check.
    assert any("running_mean" in k for k in before["densenet"])
    assert all(p.requires_grad for p in toy.parameters())


def test_only_trainable_parameters_are_optimised(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    fit(toy, spec(max_epochs=1), loaders, tmp_path)
    optimizer = load_checkpoint(tmp_path / LAST_CHECKPOINT)["optimizer"]
    trainable = sum(1 for n in ("encoder", "decoder", "saliency_head")
                    for _ in toy.get_submodule(n).parameters())  # fmt: skip
    assert len(optimizer["param_groups"]) == 1
    assert len(optimizer["param_groups"][0]["params"]) == trainable
    assert len(optimizer["state"]) == trainable
    assert optimizer["param_groups"][0]["weight_decay"] == 0


def test_best_checkpoint_is_the_lowest_validation_loss(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    # A large LR makes the validation loss go up and down.
    result = fit(toy, spec(lr=0.3, max_epochs=6, lr_patience=100), loaders, tmp_path)
    val = [h["val_loss"] for h in result.history]
    assert result.best_epoch == min(range(len(val)), key=val.__getitem__)
    assert result.final_metrics == result.history[result.best_epoch]
    best = load_checkpoint(result.best_checkpoint)
    assert best["epoch"] == result.best_epoch
    assert same(best["model"], toy.state_dict())
    # The returned weights are the best ones: validating them again gives the best loss.
    from model_lib.training import stage_val_loss

    again = stage_val_loss(toy, spec(), loaders(8)[1])["val_loss"]
    assert again == pytest.approx(min(val), rel=1e-5)


@pytest.mark.parametrize("lr_patience", [0, 100])
def test_an_lr_drop_reloads_the_best_weights(
    toy: ToyNet, misleading_loaders: tuple[BatchLoader, BatchLoader], tmp_path: Path,
    lr_patience: int,
) -> None:  # fmt: skip
    recorder = Recorder(toy, tmp_path / BEST_CHECKPOINT)
    stage = spec(
        loss="ce_densenet", trains=("densenet", "densenet_head"), branch="densenet", max_epochs=4,
        lr_patience=lr_patience, min_lr=0, early_stopping_patience=10,
    )  # fmt: skip
    result = fit_stage(
        toy, stage, *misleading_loaders, checkpoint_dir=tmp_path, callbacks=[recorder],
        progress=False, precision="fp32",
    )  # fmt: skip
    val = [h["val_loss"] for h in result.history]
    lrs = [h["lr"] for h in result.history]
    assert result.best_epoch == 0 and min(val[1:]) > val[0]
    # With patience 0 every epoch after the best drops the LR and goes back to the best weights;
    # without drops the weights after such an epoch are not the best ones.
    if lr_patience == 0:
        assert recorder.equals_best == [True] * 4
        assert lrs == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    else:
        assert recorder.equals_best == [True, False, False, False]
        assert lrs == [1e-2] * 4


def test_early_stopping(toy: ToyNet, loaders: Loaders, tmp_path: Path) -> None:
    # A negligible LR on the classifier alone keeps the validation loss flat: no improvement.
    stage = spec(
        loss="ce_fusion", trains=("fusion_classifier",), lr=1e-12, early_stopping_patience=2,
        lr_patience=100, min_lr=0, max_epochs=10,
    )  # fmt: skip
    result = fit(toy, stage, loaders, tmp_path)
    assert result.stopped_reason == "early_stopping"
    assert len(result.history) == 3 and result.best_epoch == 0


def test_stops_once_the_lr_is_below_min_lr(toy: ToyNet, loaders: Loaders, tmp_path: Path) -> None:
    stage = spec(
        loss="ce_fusion", trains=("fusion_classifier",), lr=1e-6, lr_patience=0, min_lr=5e-8,
        max_epochs=10,
    )  # fmt: skip
    result = fit(toy, stage, loaders, tmp_path)
    assert result.stopped_reason == "lr_below_min"
    assert [h["lr"] for h in result.history] == pytest.approx([1e-6, 1e-6, 1e-7])


def _fresh_fit(
    loaders: tuple[BatchLoader, BatchLoader], tmp: Path, stage: StageSpec, **kw: object
) -> tuple[FitResult, ToyNet]:
    torch.manual_seed(0)
    model = ToyNet()
    kw = {"checkpoint_dir": tmp, "progress": False, "precision": "fp32", "seed": 3, **kw}
    return fit_stage(model, stage, *loaders, **kw), model


JOINT = spec(loss="joint", head="fusion", trains=ALL, max_epochs=4, lr=3e-3, lr_patience=1)
# On the misleading split the validation loss only grows: the LR drops at epoch 2, which a
# resume from epoch 1 gets right only with the scheduler's state.
DROPPING = spec(loss="ce_fusion", trains=ALL, max_epochs=4, lr_patience=1)


@pytest.mark.parametrize("case", ["joint", "lr_drop"])
def test_resume_after_an_interruption_is_exact(
    loaders: Loaders, misleading_loaders: tuple[BatchLoader, BatchLoader], tmp_path: Path,
    case: str,
) -> None:  # fmt: skip
    stage = JOINT if case == "joint" else DROPPING

    def batches() -> tuple[BatchLoader, BatchLoader]:
        if case == "joint":
            return loaders(stage.batch_size)
        return misleading_loaders

    reference, ref_model = _fresh_fit(batches(), tmp_path / "a", stage)
    if case == "lr_drop":
        assert [h["lr"] for h in reference.history] == pytest.approx([1e-2, 1e-2, 1e-2, 1e-3])

    with pytest.raises(Interrupt):
        _fresh_fit(batches(), tmp_path / "b", stage, callbacks=[StopAt(1)])
    assert load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)["progress"]["stopped"] is None
    # Another process would start from a new model: everything must come from the checkpoint.
    torch.manual_seed(123)
    resumed_model = ToyNet()
    recorder = Recorder()
    resumed = fit_stage(
        resumed_model, stage, *batches(), checkpoint_dir=tmp_path / "b", callbacks=[recorder],
        progress=False, precision="fp32", seed=99,
    )  # fmt: skip

    assert recorder.starts == [("s", 2)]
    assert [e for _, e, _ in recorder.epochs] == [2, 3]
    assert resumed.history == reference.history
    assert resumed.best_epoch == reference.best_epoch
    assert same(resumed_model.state_dict(), ref_model.state_dict())
    ref_last = load_checkpoint(tmp_path / "a" / LAST_CHECKPOINT)
    new_last = load_checkpoint(tmp_path / "b" / LAST_CHECKPOINT)
    assert same(ref_last["model"], new_last["model"])
    if case == "joint":
        # The stage's own module (the joint loss's sigma) resumes too.
        assert same(ref_last["stage_module"], new_last["stage_module"])


class FailingLoader:
    """Raises on the second batch of the first epoch, once."""

    def __init__(self, inner: BatchLoader) -> None:
        self.inner = inner
        self.armed = True

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for i, batch in enumerate(self.inner):
            if self.armed and i == 1:
                self.armed = False
                raise Interrupt
            yield batch


def test_a_kill_in_the_first_epoch_restarts_from_the_starting_weights(
    loaders: Loaders, tmp_path: Path
) -> None:
    reference, ref_model = _fresh_fit(loaders(JOINT.batch_size), tmp_path / "a", JOINT)
    torch.manual_seed(0)
    model = ToyNet()
    train, val = loaders(JOINT.batch_size)
    failing = FailingLoader(train)
    kw = {"checkpoint_dir": tmp_path / "b", "progress": False, "precision": "fp32", "seed": 3}
    with pytest.raises(Interrupt):
        fit_stage(model, JOINT, failing, val, **kw)
    # The same model object, already changed by one step: the checkpoint must undo that.
    resumed = fit_stage(model, JOINT, failing, val, **kw)
    assert resumed.history == reference.history
    assert same(model.state_dict(), ref_model.state_dict())


def test_a_finished_stage_only_reloads_its_best_weights(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    first = fit(toy, spec(max_epochs=2), loaders, tmp_path)
    best = snapshot(toy)
    torch.manual_seed(7)
    other = ToyNet()
    recorder = Recorder()
    again = fit(other, spec(max_epochs=2), loaders, tmp_path, callbacks=[recorder])
    assert again == first
    assert same(other.state_dict(), best)
    assert recorder.starts == [] and recorder.epochs == [] and recorder.ends == []
    # Raising the epoch cap continues the stage where it stopped.
    more = fit(other, spec(max_epochs=3), loaders, tmp_path, callbacks=[recorder])
    assert len(more.history) == 3 and more.history[:2] == first.history
    assert recorder.starts == [("s", 2)]


def test_resume_refuses_a_checkpoint_of_another_spec(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    fit(toy, spec(max_epochs=1), loaders, tmp_path)
    with pytest.raises(ValueError, match=r"last\.pt.*\['lr'\]"):
        fit(toy, spec(max_epochs=1, lr=1e-3), loaders, tmp_path)
    # Without resume the stage starts afresh and replaces the checkpoints.
    result = fit(toy, spec(max_epochs=1, lr=1e-3), loaders, tmp_path, resume=False)
    assert load_checkpoint(result.best_checkpoint)["spec"]["lr"] == 1e-3


def test_callbacks_receive_each_epochs_metrics(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    recorder = Recorder()
    stage = spec(loss="joint", head="fusion", trains=ALL, max_epochs=2)
    result = fit(toy, stage, loaders, tmp_path, callbacks=[recorder])
    assert recorder.starts == [("s", 0)]
    assert [(s, e) for s, e, _ in recorder.epochs] == [("s", 0), ("s", 1)]
    assert [m for _, _, m in recorder.epochs] == result.history
    assert recorder.ends == [result]
    keys = {"train_loss", "val_loss", "lr", "val_accuracy", "val_auc_macro", "val_auc_micro",
            "val_cc", "sigma_c", "sigma_s"}  # fmt: skip
    assert set(result.history[0]) == keys
    assert all(math.isfinite(v) for m in result.history for v in m.values())


def test_a_callback_may_override_only_what_it_needs(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    class ValLosses(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
            self.losses.append(metrics["val_loss"])

    watcher = ValLosses()
    result = fit(toy, spec(max_epochs=2), loaders, tmp_path, callbacks=[watcher])
    assert watcher.losses == [h["val_loss"] for h in result.history]


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        ("kl", {"val_cc"}),
        ("ce_densenet", {"val_accuracy", "val_auc_macro", "val_auc_micro"}),
        ("triplet", set()),
    ],
)
def test_each_stage_reports_its_own_metrics(
    toy: ToyNet, loaders: Loaders, tmp_path: Path, loss: str, expected: set[str]
) -> None:
    branch = "full" if loss == "kl" else "densenet"
    trains = (
        ("encoder", "decoder", "saliency_head") if loss == "kl" else ("densenet", "densenet_head")
    )
    result = fit(
        toy, spec(loss=loss, branch=branch, trains=trains, max_epochs=1), loaders, tmp_path
    )
    assert set(result.history[0]) == {"train_loss", "val_loss", "lr"} | expected


def test_checkpoints_load_with_weights_only(toy: ToyNet, loaders: Loaders, tmp_path: Path) -> None:
    stage = spec(loss="supcon", trains=("densenet",), branch="densenet", max_epochs=1)
    result = fit(toy, stage, loaders, tmp_path)
    for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
        payload = torch.load(tmp_path / name, weights_only=True)
        # SupCon's projection head is the stage's, saved with it but not part of the model.
        assert any(k.startswith("net.") for k in payload["stage_module"])
        assert not any(k.startswith("net.") for k in payload["model"])
    assert not list(tmp_path.glob(".*tmp"))
    assert result.best_checkpoint == tmp_path / BEST_CHECKPOINT


def test_a_diverging_stage_stops_and_keeps_its_best(
    toy: ToyNet, loaders: Loaders, tmp_path: Path
) -> None:
    class Poison:
        def on_stage_start(self, spec: StageSpec, start_epoch: int) -> None:
            pass

        def on_epoch_end(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
            if epoch == 0:
                with torch.no_grad():
                    toy.saliency_head.weight.fill_(float("nan"))

        def on_stage_end(self, result: FitResult) -> None:
            pass

    result = fit(toy, spec(max_epochs=5), loaders, tmp_path, callbacks=[Poison()])
    assert result.stopped_reason == "non_finite_loss"
    assert len(result.history) == 2 and result.best_epoch == 0
    assert torch.isfinite(toy.saliency_head.weight).all()


def test_bf16_autocast_trains_on_cpu(toy: ToyNet, loaders: Loaders, tmp_path: Path) -> None:
    stage = spec(loss="joint", head="fusion", trains=ALL, max_epochs=2)
    result = fit(toy, stage, loaders, tmp_path, precision="bf16")
    assert all(math.isfinite(v) for m in result.history for v in m.values())
    assert toy.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert toy.encoder[0].weight.dtype == torch.float32


def test_unknown_submodule_and_empty_loader_errors(
    toy: ToyNet, tmp_path: Path, splits: tuple
) -> None:
    train, val = splits
    with pytest.raises(ValueError, match=r"stage s: trains \['res_se_encoder'\]"):
        fit_stage(toy, spec(trains=("res_se_encoder",)), BatchLoader(train, 8),
                  BatchLoader(val, 8), checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    empty = BatchLoader(train, 100, drop_last=True)
    with pytest.raises(ValueError, match="training loader yielded no batch"):
        fit_stage(toy, spec(), empty, BatchLoader(val, 8), checkpoint_dir=tmp_path,
                  progress=False, precision="fp32")  # fmt: skip
