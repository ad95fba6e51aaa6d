"""Promotion gate: the policy file, ``decide`` on hand-made scores, ``Scores`` themselves, and the
register -> promote flow on an embedded store and through a real ``mlflow server`` with its
artifacts on S3 (moto)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from components.model_package import WeightsIntegrityError, load_registered_model
from components.promote import (
    Decision,
    PromotionPolicy,
    StaleDecision,
    decide,
    load_policy,
    promote,
    run_promotion,
)
from components.register import register_model
from components.scores import Scores, images_fingerprint, scores_for_model
from model_lib.metrics import cc
from model_lib.presets import ExperimentConfig
from tests.components.conftest import Backend, MlflowServer, s3_keys

POLICY_FILE = Path(__file__).resolve().parents[2] / "mlflow" / "promotion.yaml"
LABELS = np.repeat([0, 1, 2], 20)
SPLIT = "a3f1" * 16  # a stand-in fingerprint of the test images


@pytest.fixture(scope="module")
def policy() -> PromotionPolicy:
    return load_policy(POLICY_FILE)


def make_scores(
    separation: float, cc_mean: float, *, cc_jitter: float = 0.0, split: str = SPLIT
) -> Scores:
    """Scores on the same 60 images: class logits are shared noise plus ``separation`` on the
    true class (higher, better AUC); per-image CC is shared noise around ``cc_mean`` plus
    independent ``cc_jitter``."""
    noise = np.random.default_rng(0).normal(size=(len(LABELS), 3))
    noise[np.arange(len(LABELS)), LABELS] += separation
    probs = np.exp(noise) / np.exp(noise).sum(axis=1, keepdims=True)
    per_image = cc_mean + np.random.default_rng(1).normal(0, 0.08, len(LABELS))
    per_image += np.random.default_rng(2).normal(0, cc_jitter, len(LABELS)) if cc_jitter else 0
    return Scores(probs, LABELS.copy(), per_image, split)


GOOD = make_scores(1.5, 0.45)
BETTER = make_scores(2.5, 0.50, cc_jitter=0.02)
WORSE_CC = make_scores(2.5, 0.40, cc_jitter=0.02)


def statuses(reasons: list[str]) -> list[str]:
    return [r.split(":")[0] for r in reasons]


# --- the policy file --------------------------------------------------------------------------


def test_the_repository_policy_loads(policy: PromotionPolicy) -> None:
    assert policy.floors.auc_macro == 0.70 and policy.floors.cc_mean == 0.30
    assert policy.versus_champion.auc_macro.min_ci_low == -0.02
    assert policy.versus_champion.require_significant_improvement
    assert policy.bootstrap.n_boot >= 100


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["floors"].update(auc=0.8), r"floors\.auc"),
        (lambda raw: raw.pop("bootstrap"), "bootstrap"),
        (lambda raw: raw["versus_champion"].update(alpha=1.5), r"versus_champion\.alpha"),
        (lambda raw: raw["floors"].update(cc_mean="high"), r"floors\.cc_mean"),
    ],
)
def test_a_bad_policy_names_the_file_and_field(
    tmp_path: Path, edit: Callable[[dict], object], message: str
) -> None:
    raw = yaml.safe_load(POLICY_FILE.read_text())
    edit(raw)
    path = tmp_path / "promotion.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=rf"(?s)promotion\.yaml.*{message}"):
        load_policy(path)


def test_a_missing_or_unparsable_policy(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.yaml"):
        load_policy(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("floors: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml"):
        load_policy(broken)


# --- decide -----------------------------------------------------------------------------------


def test_the_first_model_is_judged_on_the_floors(policy: PromotionPolicy) -> None:
    decision = decide(policy, GOOD, None)
    assert decision.approved
    assert statuses(decision.reasons) == ["pass", "pass", "pass", "info"]
    assert decision.details["compared_to_champion"] is False
    assert decision.details["challenger"]["cc_mean"] == pytest.approx(GOOD.cc.mean())

    weak = make_scores(0.2, 0.45)
    rejected = decide(policy, weak, None)
    assert not rejected.approved
    (failed,) = [r for r in rejected.reasons if r.startswith("fail")]
    assert failed.startswith("fail: macro AUC 0.") and failed.endswith(">= floor 0.7000")
    assert not decide(policy, make_scores(1.5, 0.2), None).approved


def test_a_clearly_better_challenger_is_approved(policy: PromotionPolicy) -> None:
    decision = decide(policy, BETTER, GOOD, champion_version="4")
    assert decision.approved, decision.reasons
    assert all(s in ("pass", "info") for s in statuses(decision.reasons))
    details = decision.details
    assert details["champion_version"] == "4" and details["compared_to_champion"] is True
    assert details["auc_bootstrap"]["delta"] > 0 and details["cc_delta"] > 0.04
    assert details["significant_cc_gain"] and details["cc_p_value"] < 1e-6
    assert details["champion"]["auc_macro"] < details["challenger"]["auc_macro"]
    json.dumps(details)  # recorded as a version tag


def test_a_worse_head_rejects_even_with_a_better_other_head(policy: PromotionPolicy) -> None:
    decision = decide(policy, WORSE_CC, GOOD, champion_version="4")
    assert not decision.approved
    (failed,) = [r for r in decision.reasons if r.startswith("fail")]
    assert failed.startswith("fail: mean CC delta -0.0")
    assert decision.details["auc_bootstrap"]["delta"] > 0


def test_a_match_is_not_an_improvement_unless_the_policy_says_so(policy: PromotionPolicy) -> None:
    same = decide(policy, GOOD, GOOD)
    assert not same.approved
    assert same.reasons[-1].startswith("fail: significant improvement at alpha=0.05: none")
    lenient = policy.model_copy(
        update={
            "versus_champion": policy.versus_champion.model_copy(
                update={"require_significant_improvement": False}
            )
        }
    )
    allowed = decide(lenient, GOOD, GOOD)
    assert allowed.approved and allowed.reasons[-1].startswith("info: significant")


def test_the_auc_interval_bounds_how_much_worse_a_challenger_may_be(
    policy: PromotionPolicy,
) -> None:
    rules = policy.versus_champion
    lenient = policy.model_copy(
        update={
            "versus_champion": rules.model_copy(
                update={"auc_macro": rules.auc_macro.model_copy(update={"min_delta": -1.0})}
            )
        }
    )
    worse_auc = make_scores(0.9, 0.55, cc_jitter=0.02)
    decision = decide(lenient, worse_auc, GOOD)
    failed = [r for r in decision.reasons if r.startswith("fail")]
    assert len(failed) == 1 and "CI [" in failed[0] and "lower bound >= -0.0200" in failed[0]
    assert decision.details["auc_bootstrap"]["ci_low"] < -0.02


def test_scores_of_different_images_cannot_be_compared(policy: PromotionPolicy) -> None:
    with pytest.raises(ValueError, match="fingerprints"):
        decide(policy, make_scores(2.5, 0.5, split="b" * 64), GOOD)
    shuffled = Scores(GOOD.probabilities, np.roll(GOOD.labels, 1), GOOD.cc)
    with pytest.raises(ValueError, match="same labelled images"):
        decide(policy, shuffled, GOOD)


def test_non_finite_scores(policy: PromotionPolicy) -> None:
    diverged = Scores(np.full_like(GOOD.probabilities, np.nan), LABELS, GOOD.cc, SPLIT)
    decision = decide(policy, diverged, GOOD)
    assert not decision.approved
    assert decision.reasons[0] == "fail: challenger scores are finite"
    broken_champion = Scores(GOOD.probabilities, LABELS, np.full(len(LABELS), np.nan), SPLIT)
    judged = decide(policy, GOOD, broken_champion)
    assert judged.approved
    assert "info: champion scores are not finite; the floors decide" in judged.reasons


def test_a_decision_round_trips_through_dicts_and_tags(policy: PromotionPolicy) -> None:
    decision = decide(policy, BETTER, GOOD, champion_version="2")
    assert Decision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision
    assert Decision.from_tags(decision.tags()) == decision


# --- Scores -----------------------------------------------------------------------------------


def test_scores_save_and_load(tmp_path: Path) -> None:
    path = tmp_path / "scores.npz"
    GOOD.save(path)
    back = Scores.load(path)
    np.testing.assert_array_equal(back.probabilities, GOOD.probabilities)
    np.testing.assert_array_equal(back.labels, GOOD.labels)
    np.testing.assert_array_equal(back.cc, GOOD.cc)
    assert back.images_sha256 == SPLIT
    assert [p.name for p in tmp_path.iterdir()] == ["scores.npz"]
    np.savez(tmp_path / "other.npz", probabilities=GOOD.probabilities)
    with pytest.raises(ValueError, match=r"other\.npz: not a scores file"):
        Scores.load(tmp_path / "other.npz")


def test_scores_reject_inconsistent_arrays() -> None:
    with pytest.raises(ValueError, match=r"probabilities \(N, C\), labels \(N,\)"):
        Scores(GOOD.probabilities, LABELS[:-1], GOOD.cc)
    with pytest.raises(ValueError, match="labels must be integers in"):
        Scores(GOOD.probabilities, LABELS + 1, GOOD.cc)


class FakeModel:
    """Answers like the pyfunc: softmax of fixed logits and a blob centred on image brightness."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, data: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(data))
        assert data.dtype == np.float32
        logits = np.stack([data.mean(axis=(1, 2, 3)) * k for k in (1.0, 2.0, 3.0)], axis=1)
        maps = data[:, 0] ** 2
        return {
            "probabilities": np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
            "saliency": maps / maps.sum(axis=(1, 2), keepdims=True),
        }


def test_scores_for_model_batches_and_fingerprints() -> None:
    rng = np.random.default_rng(3)
    images = rng.random((10, 1, 9, 7))  # float64: cast to float32 for the model
    maps = rng.random((10, 9, 7))
    labels = np.arange(10) % 3
    model = FakeModel()
    scores = scores_for_model(model, images, maps, labels, batch_size=4)
    assert model.batches == [4, 4, 2]
    whole = scores_for_model(FakeModel(), images, maps, labels, batch_size=64)
    np.testing.assert_allclose(scores.probabilities, whole.probabilities)
    expected_cc = cc(images[:, 0].astype(np.float32) ** 2, maps)
    np.testing.assert_allclose(scores.cc, expected_cc, rtol=1e-5)
    assert scores.images_sha256 == images_fingerprint(images) != images_fingerprint(images[:9])
    with pytest.raises(ValueError, match="must match"):
        scores_for_model(model, images, maps[:, :8], labels)


# --- the flow on a registry -------------------------------------------------------------------


def lineage(run: str) -> dict[str, str]:
    return {"data_rev": "r7", "data_md5": "9e107d9d372bb6826bd81d3542a419d6",
            "git_sha": "911c390", "pipeline_run_id": run, "preset": "ci"}  # fmt: skip


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}


def test_register_and_promote_flow(
    backend: Backend,
    model_name: str,
    weights_file: Path,
    ci_config: ExperimentConfig,
    policy: PromotionPolicy,
    request: pytest.FixtureRequest,
) -> None:
    uri = backend.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)

    def register(run: str) -> str:
        result = register_model(weights_file, ci_config, {"cc_mean": 0.5}, lineage(run),
                                tracking_uri=uri, model_name=model_name,
                                artifact_location=backend.artifact_location)  # fmt: skip
        return result.version

    v1 = register("run-1")
    assert aliases(client, model_name) == {"challenger": v1}
    with pytest.raises(LookupError, match=f"{model_name} version 9 at"):
        promote(decide(policy, GOOD, None), 9, tracking_uri=uri, model_name=model_name)

    first = promote(decide(policy, GOOD, None), v1, tracking_uri=uri, model_name=model_name)
    assert (first.champion, first.previous_champion, len(first.moves)) == (v1, None, 1)
    assert aliases(client, model_name) == {"challenger": v1, "champion": v1}
    tags = client.get_model_version(model_name, v1).tags
    assert tags["validation_status"] == "approved"
    assert "info: no champion; the floors decide" in tags["validation_reasons"]
    assert tags["alias_history"].endswith(f"champion -> v{v1} (was none)")

    again = promote(decide(policy, GOOD, None), v1, tracking_uri=uri, model_name=model_name)
    assert again.moves == () and again.champion == v1
    assert client.get_model_version(model_name, v1).tags == tags  # nothing rewritten

    v2 = register("run-2")
    better = decide(policy, BETTER, GOOD, champion_version=v1)
    second = promote(better, v2, tracking_uri=uri, model_name=model_name)
    assert (second.champion, second.previous_champion) == (v2, v1)
    assert aliases(client, model_name) == {"challenger": v2, "champion": v2,
                                           "previous_champion": v1}  # fmt: skip
    v2_tags = client.get_model_version(model_name, v2).tags
    assert v2_tags["validation_status"] == "approved"
    assert v2_tags["validation_reasons"].splitlines() == better.reasons
    assert json.loads(v2_tags["validation_details"])["champion_version"] == v1
    assert (
        f"previous_champion -> v{v1} (was none)"
        in (client.get_model_version(model_name, v1).tags["alias_history"])
    )

    v3 = register("run-3")
    with pytest.raises(StaleDecision, match=f"judged against champion {v1}.*now version {v2}"):
        promote(decide(policy, BETTER, GOOD, champion_version=v1), v3,
                tracking_uri=uri, model_name=model_name)  # fmt: skip
    assert "validation_status" not in client.get_model_version(model_name, v3).tags
    worse = decide(policy, WORSE_CC, BETTER, champion_version=v2)
    third = promote(worse, v3, tracking_uri=uri, model_name=model_name)
    assert not third.approved and third.moves == ()
    assert aliases(client, model_name) == {"challenger": v3, "champion": v2,
                                           "previous_champion": v1}  # fmt: skip
    v3_tags = client.get_model_version(model_name, v3).tags
    assert v3_tags["validation_status"] == "rejected"
    assert "fail: mean CC delta" in v3_tags["validation_reasons"]

    # A retried register task of run 2: version 2 back, no fourth version, aliases unchanged.
    assert register("run-2") == v2
    assert len(client.search_model_versions(f"name='{model_name}'")) == 3
    assert aliases(client, model_name)["challenger"] == v3

    champion, version = load_registered_model(f"models:/{model_name}@champion", tracking_uri=uri)
    assert str(version.version) == v2
    out = champion.predict(np.full((2, 1, *ci_config.model.input_hw), 0.5, dtype=np.float32))
    assert out["probabilities"].shape == (2, 3)

    if uri.startswith("http"):
        server: MlflowServer = request.getfixturevalue("mlflow_server")
        _check_artifacts_on_s3(server, client, model_name, v3)


def _check_artifacts_on_s3(
    server: MlflowServer, client: MlflowClient, model_name: str, version: str
) -> None:
    """The versions' files are in the bucket; a replaced weights object is caught on load."""
    import boto3

    keys = s3_keys(server)
    for suffix in ("MLmodel", "python_model.pkl", "requirements.txt", "artifacts/weights.pt",
                   "artifacts/package.json", "code/model_lib/models/builders.py"):  # fmt: skip
        assert sum(k.endswith(f"/artifacts/{suffix}") for k in keys) >= 3, suffix
    source = client.get_model_version_download_uri(model_name, version)
    # mlflow-artifacts:/<experiment>/models/<model id>/artifacts -> the key under the bucket.
    prefix = source.split(":", 1)[1].lstrip("/")
    weights_key = f"{prefix}/artifacts/weights.pt"
    assert weights_key in keys
    boto3.client("s3", endpoint_url=server.s3_endpoint).put_object(
        Bucket=server.bucket, Key=weights_key, Body=b"tampered"
    )
    with pytest.raises(
        WeightsIntegrityError, match=rf"\(version {version}\): weights\.pt has sha256"
    ):
        load_registered_model(f"models:/{model_name}/{version}", tracking_uri=server.url)


def test_run_promotion_scores_both_models_on_the_same_images(
    sqlite_backend: Backend,
    weights_file: Path,
    ci_config: ExperimentConfig,
    policy: PromotionPolicy,
    tmp_path: Path,
) -> None:
    """The whole step with real models. Random weights clear no real floor, so this policy has
    none; the second version has the same weights, so it is no improvement."""
    lenient = tmp_path / "promotion.yaml"
    floors = {"floors": {"auc_macro": 0.0, "cc_mean": -1.0}}
    lenient.write_text(json.dumps({**policy.model_dump(mode="json"), **floors}))
    rng = np.random.default_rng(5)
    hw = ci_config.model.input_hw
    images = rng.random((9, 1, *hw), dtype=np.float32)
    maps = rng.random((9, *hw))
    labels = np.arange(9) % 3
    uri = sqlite_backend.tracking_uri
    kwargs = {"tracking_uri": uri, "artifact_location": sqlite_backend.artifact_location}

    register_model(weights_file, ci_config, {}, lineage("run-1"), **kwargs)
    decision, result = run_promotion(lenient, images, maps, labels, challenger_version=1,
                                     tracking_uri=uri)  # fmt: skip
    assert decision.approved and result.champion == "1"
    assert decision.details["compared_to_champion"] is False

    # Logged into a run created beforehand (say, by the training step): resumed, then ended.
    client = MlflowClient(uri, registry_uri=uri)
    training_run = client.create_run(client.get_experiment_by_name("cxr-gaze").experiment_id)
    register_model(weights_file, ci_config, {}, lineage("run-2"), run_id=training_run.info.run_id,
                   **kwargs)  # fmt: skip
    assert client.get_run(training_run.info.run_id).info.status == "FINISHED"
    decision, result = run_promotion(lenient, images, maps, labels, challenger_version="2",
                                     tracking_uri=uri)  # fmt: skip
    assert decision.details["champion_version"] == "1"
    # Same weights, same images: identical scores, no difference to test.
    assert decision.details["cc_delta"] == 0.0
    assert decision.details["auc_bootstrap"]["delta"] == 0.0
    assert not decision.approved and result.champion == "1"

    # Re-running the step returns the recorded decision instead of judging again.
    replay, replayed = run_promotion(lenient, images, maps, labels, challenger_version="2",
                                     tracking_uri=uri)  # fmt: skip
    assert replay == decision and replayed.moves == () and replayed.champion == "1"


def test_rerunning_the_step_of_a_superseded_champion_moves_nothing(
    sqlite_backend: Backend, model_name: str, policy: PromotionPolicy
) -> None:
    """v2 was promoted and then replaced by v3; its step run again (a manual re-run) replays the
    recorded verdict and leaves v3 where it is. Replayed verdicts are not scored, so the
    versions need no files."""
    uri = sqlite_backend.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(model_name)
    for run in ("run-1", "run-2", "run-3"):
        client.create_model_version(model_name, "s3://nowhere/model", tags={"pipeline_run_id": run})
    promote(decide(policy, GOOD, None), "1", tracking_uri=uri, model_name=model_name)
    for version, champion in (("2", "1"), ("3", "2")):
        decision = decide(policy, BETTER, GOOD, champion_version=champion)
        promote(decision, version, tracking_uri=uri, model_name=model_name)
    recorded = client.get_model_version(model_name, "2").tags

    empty = np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 4, 4)), np.arange(2)
    decision, result = run_promotion(policy, *empty, challenger_version="2", tracking_uri=uri,
                                     model_name=model_name)  # fmt: skip
    assert decision == Decision.from_tags(recorded) and decision.approved
    assert (result.champion, result.previous_champion, result.moves) == ("3", "2", ())
    assert client.get_model_version(model_name, "2").tags == recorded
    with pytest.raises(StaleDecision, match=r"judged against champion 1.*now version 3"):
        promote(decision, "2", tracking_uri=uri, model_name=model_name)
