"""Promote step: the champion/challenger gate and the alias moves.

- :func:`load_policy` reads ``mlflow/promotion.yaml``.
- :func:`decide` is pure: challenger and champion :class:`~components.scores.Scores` on the same
  test images in, a :class:`Decision` with one reason per check out.
- :func:`promote` applies a decision to the registry: on approval ``previous_champion`` takes the
  old champion and ``champion`` moves to the challenger; either way the version is tagged
  ``validation_status`` with the reasons. It re-reads the aliases before moving anything, so a
  re-run finishes an interrupted promotion and never moves an alias twice.
- :func:`run_promotion` is the whole step: load both models, score them, decide, promote.

Reading the champion and moving it happen under the model's promotion lock
(:mod:`components.registry_lock`), so two gates running at once take turns: the second sees the
champion the first left. :func:`run_promotion` then judges its challenger again against that
champion; :func:`promote`, which has no scores to judge with, refuses (:class:`StaleDecision`).
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import yaml
from kfp.dsl import Dataset, Input
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from components.kfp_step import step_component
from components.model_package import load_registered_model
from components.registry import (
    CHAMPION,
    MODEL_NAME,
    PREVIOUS_CHAMPION,
    VALIDATION_STATUS_TAG,
    registry_client,
    utc_now,
    version_by_alias,
)
from components.registry_lock import HeldLock, promotion_lock_name, registry_lock
from components.scores import Scores, scores_for_model
from model_lib.metrics import bootstrap_auc_difference, paired_t_test

logger = logging.getLogger(__name__)

APPROVED, REJECTED = "approved", "rejected"
REASONS_TAG, DETAILS_TAG, VALIDATED_AT_TAG = (
    "validation_reasons",
    "validation_details",
    "validated_at",
)
ALIAS_HISTORY_TAG = "alias_history"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Floors(_Strict):
    """Absolute minimums on the test split, with or without a champion."""

    auc_macro: float = Field(ge=0, le=1)
    cc_mean: float = Field(ge=-1, le=1)


class AucRule(_Strict):
    min_delta: float = Field(ge=-1, le=1, description="AUC(challenger) - AUC(champion) >= this")
    min_ci_low: float = Field(ge=-1, le=1, description="lower CI bound of that delta >= this")


class CcRule(_Strict):
    min_delta: float = Field(ge=-2, le=2, description="mean CC(challenger) - (champion) >= this")


class VersusChampion(_Strict):
    auc_macro: AucRule
    cc_mean: CcRule
    alpha: float = Field(gt=0, lt=1, description="p-value at or below which a gain counts")
    require_significant_improvement: bool


class BootstrapSettings(_Strict):
    n_boot: int = Field(ge=100)
    seed: int = Field(ge=0)
    confidence: float = Field(gt=0, lt=1)


class PromotionPolicy(_Strict):
    """``mlflow/promotion.yaml``; see the comments there."""

    floors: Floors
    versus_champion: VersusChampion
    bootstrap: BootstrapSettings


def policy_from_mapping(raw: Any, source: str) -> PromotionPolicy:
    """Validate a policy given as plain data (a pipeline parameter, parsed YAML).

    Raises:
        ValueError: not a valid policy (the message names ``source`` and the field).
    """
    try:
        return PromotionPolicy.model_validate(raw)
    except ValidationError as err:
        raise ValueError(f"{source}: {err}") from err


def load_policy(path: Path) -> PromotionPolicy:
    """Read a promotion policy; unknown or missing keys are errors.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not YAML, or not a valid policy (the message names the file and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no promotion policy there")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: {err}") from err
    return policy_from_mapping(raw, str(path))


@dataclass(frozen=True)
class Decision:
    """The gate's verdict. ``reasons``: one line per check, ``pass: ...`` or ``fail: ...``.
    ``details``: the numbers behind them (JSON-serialisable), including ``champion_version``
    (None without a champion, or when the caller did not say) and ``compared_to_champion``."""

    approved: bool
    reasons: list[str]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"approved": self.approved, "reasons": list(self.reasons), "details": self.details}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Decision:
        return cls(bool(raw["approved"]), list(raw["reasons"]), dict(raw["details"]))

    def tags(self) -> dict[str, str]:
        """The version tags that record this decision (see :func:`promote`)."""
        return {
            VALIDATION_STATUS_TAG: APPROVED if self.approved else REJECTED,
            REASONS_TAG: "\n".join(self.reasons),
            DETAILS_TAG: json.dumps(self.details, sort_keys=True),
        }

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Decision:
        """The decision a version's tags record."""
        return cls(
            approved=tags[VALIDATION_STATUS_TAG] == APPROVED,
            reasons=tags.get(REASONS_TAG, "").splitlines(),
            details=json.loads(tags.get(DETAILS_TAG, "{}")),
        )


def _check(reasons: list[str], ok: bool, text: str) -> bool:
    reasons.append(f"{'pass' if ok else 'fail'}: {text}")
    return ok


def _at_least(value: float, bound: float) -> bool:
    """``value >= bound``, False for NaN."""
    return not math.isnan(value) and value >= bound


def _check_same_images(challenger: Scores, champion: Scores) -> None:
    if challenger.n != champion.n or not np.array_equal(challenger.labels, champion.labels):
        raise ValueError(
            f"challenger ({challenger.n} images) and champion ({champion.n} images) were not "
            "scored on the same labelled images"
        )
    if (
        challenger.images_sha256
        and champion.images_sha256
        and challenger.images_sha256 != champion.images_sha256
    ):
        raise ValueError("challenger and champion were scored on different images (fingerprints)")


def _versus_champion(
    policy: PromotionPolicy, challenger: Scores, champion: Scores, reasons: list[str]
) -> tuple[bool, dict[str, Any]]:
    """The relative checks; returns whether all passed and their numbers."""
    rule, boot = policy.versus_champion, policy.bootstrap
    auc = bootstrap_auc_difference(
        challenger.probabilities,
        champion.probabilities,
        challenger.labels,
        n_boot=boot.n_boot,
        seed=boot.seed,
        confidence=boot.confidence,
    )
    cc_delta = float(np.mean(challenger.cc - champion.cc))
    t, p_cc = paired_t_test(challenger.cc, champion.cc)
    ok = _check(
        reasons,
        _at_least(auc["delta"], rule.auc_macro.min_delta),
        f"macro AUC delta {auc['delta']:+.4f} vs champion >= {rule.auc_macro.min_delta:+.4f}",
    )
    ok &= _check(
        reasons,
        _at_least(auc["ci_low"], rule.auc_macro.min_ci_low),
        f"macro AUC delta {boot.confidence:.0%} CI [{auc['ci_low']:+.4f}, "
        f"{auc['ci_high']:+.4f}] lower bound >= {rule.auc_macro.min_ci_low:+.4f}",
    )
    ok &= _check(
        reasons,
        _at_least(cc_delta, rule.cc_mean.min_delta),
        f"mean CC delta {cc_delta:+.4f} vs champion >= {rule.cc_mean.min_delta:+.4f}",
    )
    auc_gain = auc["delta"] > 0 and auc["p_value"] <= rule.alpha
    cc_gain = cc_delta > 0 and p_cc <= rule.alpha
    gains = [name for name, gain in (("macro AUC", auc_gain), ("mean CC", cc_gain)) if gain]
    named = ", ".join(gains) or "none"
    if rule.require_significant_improvement:
        ok &= _check(
            reasons,
            auc_gain or cc_gain,
            f"significant improvement at alpha={rule.alpha}: {named} "
            f"(AUC bootstrap p={auc['p_value']:.4g}, CC paired t-test p={p_cc:.4g})",
        )
    else:
        reasons.append(
            f"info: significant improvement at alpha={rule.alpha}: {named} "
            f"(AUC bootstrap p={auc['p_value']:.4g}, CC paired t-test p={p_cc:.4g})"
        )
    numbers = {
        "auc_bootstrap": auc,
        "cc_delta": cc_delta,
        "cc_t": t,
        "cc_p_value": p_cc,
        "significant_auc_gain": auc_gain,
        "significant_cc_gain": cc_gain,
    }
    return ok, numbers


def decide(
    policy: PromotionPolicy,
    challenger: Scores,
    champion: Scores | None,
    *,
    champion_version: str | None = None,
) -> Decision:
    """Judge the challenger: floors always, then the policy's rules against the champion.

    Without a champion (the first model) the floors decide. A champion whose scores are not
    finite cannot be compared with, and the floors decide too (with a reason saying so).

    Args:
        policy: thresholds, significance level and bootstrap settings.
        challenger, champion: scores on the same test images (same labels, same fingerprint).
        champion_version: the champion's version number, recorded so that :func:`promote` can
            refuse a decision the registry has moved past.

    Raises:
        ValueError: the two were scored on different images.
    """
    summary = challenger.summary()
    reasons: list[str] = []
    ok = _check(reasons, challenger.finite, "challenger scores are finite")
    ok &= _check(
        reasons,
        _at_least(summary["auc_macro"], policy.floors.auc_macro),
        f"macro AUC {summary['auc_macro']:.4f} >= floor {policy.floors.auc_macro:.4f}",
    )
    ok &= _check(
        reasons,
        _at_least(summary["cc_mean"], policy.floors.cc_mean),
        f"mean CC {summary['cc_mean']:.4f} >= floor {policy.floors.cc_mean:.4f}",
    )
    details: dict[str, Any] = {
        "challenger": summary,
        "champion_version": champion_version,
        "compared_to_champion": champion is not None,
        "policy": policy.model_dump(mode="json"),
    }
    if champion is None:
        reasons.append("info: no champion; the floors decide")
    else:
        _check_same_images(challenger, champion)
        details["champion"] = champion.summary()
        if not champion.finite:
            reasons.append("info: champion scores are not finite; the floors decide")
        elif challenger.finite:
            relative_ok, numbers = _versus_champion(policy, challenger, champion, reasons)
            ok &= relative_ok
            details.update(numbers)
    return Decision(approved=bool(ok), reasons=reasons, details=details)


@dataclass(frozen=True)
class PromotionResult:
    """After :func:`promote`: the version judged, the verdict, the aliases as they now are,
    and the alias moves this call made (empty on a re-run that found them done)."""

    version: str
    approved: bool
    champion: str | None
    previous_champion: str | None
    moves: tuple[str, ...]


class StaleDecision(RuntimeError):
    """The champion changed between the decision and the promotion; re-run the gate."""


def append_alias_history(client: MlflowClient, model_name: str, version: str, line: str) -> None:
    mv = client.get_model_version(model_name, version)
    history = mv.tags.get(ALIAS_HISTORY_TAG)
    value = f"{history}\n{line}" if history else line
    client.set_model_version_tag(model_name, version, ALIAS_HISTORY_TAG, value)


def _stale(decision: Decision, current: str | None, version: str) -> str | None:
    """Why ``decision`` no longer holds with ``current`` as champion, or None if it does."""
    if current is None or current == version:
        return None
    if not decision.details.get("compared_to_champion", False):
        return (
            f"version {version} was judged without a champion, but version {current} is "
            "champion now"
        )
    judged = decision.details.get("champion_version")
    if judged is not None and str(judged) != current:
        return (
            f"version {version} was judged against champion {judged}, but the champion is now "
            f"version {current}"
        )
    return None


def _champion_version(client: MlflowClient, model_name: str) -> str | None:
    current = version_by_alias(client, model_name, CHAMPION)
    return None if current is None else str(current.version)


def _promotion_lock(
    tracking_uri: str, model_name: str, version: str
) -> AbstractContextManager[HeldLock]:
    return registry_lock(
        tracking_uri, promotion_lock_name(model_name), holder=f"promotion of v{version}"
    )


def _model_version(
    client: MlflowClient, model_name: str, version: str, tracking_uri: str
) -> ModelVersion:
    try:
        return client.get_model_version(model_name, version)
    except MlflowException as err:
        raise LookupError(
            f"{model_name} version {version} at {tracking_uri}: {err.message}"
        ) from err


def promote(
    decision: Decision,
    challenger_version: str | int,
    *,
    tracking_uri: str,
    model_name: str = MODEL_NAME,
) -> PromotionResult:
    """Record ``decision`` on the version and, if approved, move the aliases.

    Tags on the version: ``validation_status`` (``approved``/``rejected``),
    ``validation_reasons`` (one per line), ``validation_details`` (JSON) and ``validated_at``
    (left as they are when a re-run brings the same decision).
    Every alias move appends ``<UTC time> <alias> -> v<N> (was ...)`` to the ``alias_history``
    tag of the version that receives the alias. The champion is read and moved under the
    promotion lock.

    Raises:
        RegistryUnreachable: the tracking server does not answer.
        LookupError: no such version.
        StaleDecision: the champion changed since the decision was made.
        LockTimeout: another promotion held the lock too long.
    """
    version = str(challenger_version)
    client = registry_client(tracking_uri)
    _model_version(client, model_name, version, tracking_uri)  # before waiting for the lock
    with _promotion_lock(tracking_uri, model_name, version) as lock:
        mv = _model_version(client, model_name, version, tracking_uri)
        current = _champion_version(client, model_name)
        if decision.approved and (stale := _stale(decision, current, version)):
            raise StaleDecision(f"{stale}; re-run the gate against it")
        return _apply(client, lock, decision, mv, current, model_name)


def _apply(
    client: MlflowClient,
    lock: HeldLock,
    decision: Decision,
    mv: ModelVersion,
    current_version: str | None,
    model_name: str,
) -> PromotionResult:
    """With the lock held and ``current_version`` the champion read under it: record the
    decision on ``mv`` and, if approved, move the aliases."""
    lock.ensure_held()  # not broken as stale while this process was scoring or stalled
    version = str(mv.version)
    now = utc_now()
    tags = decision.tags()
    # A re-run with the same verdict keeps the first record (and its time).
    if any(mv.tags.get(k) != v for k, v in tags.items()):
        for key, value in {**tags, VALIDATED_AT_TAG: now}.items():
            client.set_model_version_tag(model_name, version, key, value)
    logger.info("%s version %s %s", model_name, version, tags[VALIDATION_STATUS_TAG])

    moves: list[str] = []
    if decision.approved and current_version != version:
        previous = version_by_alias(client, model_name, PREVIOUS_CHAMPION)
        if current_version is not None and (
            previous is None or str(previous.version) != current_version
        ):
            client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, current_version)
            was = "none" if previous is None else f"v{previous.version}"
            moves.append(f"{now} {PREVIOUS_CHAMPION} -> v{current_version} (was {was})")
            append_alias_history(client, model_name, current_version, moves[-1])
        client.set_registered_model_alias(model_name, CHAMPION, version)
        was = "none" if current_version is None else f"v{current_version}"
        moves.append(f"{now} {CHAMPION} -> v{version} (was {was})")
        append_alias_history(client, model_name, version, moves[-1])
        for move in moves:
            logger.info("%s: %s", model_name, move)
    return _result(client, model_name, version, decision.approved, tuple(moves))


def _result(
    client: MlflowClient, model_name: str, version: str, approved: bool, moves: tuple[str, ...]
) -> PromotionResult:
    champion = version_by_alias(client, model_name, CHAMPION)
    previous = version_by_alias(client, model_name, PREVIOUS_CHAMPION)
    return PromotionResult(
        version=version,
        approved=approved,
        champion=None if champion is None else str(champion.version),
        previous_champion=None if previous is None else str(previous.version),
        moves=moves,
    )


def _was_champion(mv: ModelVersion) -> bool:
    """Whether ``champion`` was ever moved to this version (its ``alias_history`` says so)."""
    marker = f" {CHAMPION} -> v{mv.version} ("
    return any(marker in line for line in mv.tags.get(ALIAS_HISTORY_TAG, "").splitlines())


class _Gate:
    """Scores registered versions on one test split (each at most once) and decides."""

    def __init__(
        self,
        policy: PromotionPolicy,
        arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
        *,
        tracking_uri: str,
        model_name: str,
        batch_size: int,
    ) -> None:
        self.policy, self.arrays = policy, arrays
        self.tracking_uri, self.model_name, self.batch_size = tracking_uri, model_name, batch_size
        self._scores: dict[str, Scores] = {}

    def scores(self, version: str) -> Scores:
        if version not in self._scores:
            model, _ = load_registered_model(
                f"models:/{self.model_name}/{version}", tracking_uri=self.tracking_uri
            )
            self._scores[version] = scores_for_model(
                model, *self.arrays, batch_size=self.batch_size
            )
        return self._scores[version]

    def judge(self, version: str, champion: str | None) -> Decision:
        """``version`` against ``champion`` (the floors alone without one)."""
        if champion == version:
            champion = None
        champion_scores = None if champion is None else self.scores(champion)
        return decide(self.policy, self.scores(version), champion_scores, champion_version=champion)


def run_promotion(
    policy: PromotionPolicy | Path,
    images: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    *,
    challenger_version: str | int,
    tracking_uri: str,
    model_name: str = MODEL_NAME,
    batch_size: int = 32,
) -> tuple[Decision, PromotionResult]:
    """The promote step: score the challenger and the current champion (both loaded from the
    registry with their weights' sha256 checked) on the same test split, decide, promote.

    The scoring happens outside the promotion lock. Under it, should the champion have moved
    since (another gate promoted meanwhile), the challenger is judged again against the new
    champion before anything moves; the decision then says so (an ``info`` reason and
    ``details["rejudged"]``).

    Args:
        policy: the thresholds, or the path of a policy file.
        images: (N, 1, H, W) preprocessed test images in [0, 1]; maps: (N, H, W) ground-truth
            gaze maps; labels: (N,) integer labels.
    """
    if not isinstance(policy, PromotionPolicy):
        policy = load_policy(policy)
    version = str(challenger_version)
    client = registry_client(tracking_uri)
    gate = _Gate(policy, (images, maps, labels), tracking_uri=tracking_uri,
                 model_name=model_name, batch_size=batch_size)  # fmt: skip
    recorded = _model_version(client, model_name, version, tracking_uri).tags
    # Judged before: finish that decision (e.g. alias moves an interrupted run left undone)
    # rather than judge again against what may now be this version itself.
    decision = (
        Decision.from_tags(recorded)
        if VALIDATION_STATUS_TAG in recorded
        else gate.judge(version, _champion_version(client, model_name))
    )
    with _promotion_lock(tracking_uri, model_name, version) as lock:
        mv = _model_version(client, model_name, version, tracking_uri)
        if VALIDATION_STATUS_TAG in mv.tags and VALIDATION_STATUS_TAG not in recorded:
            # Another run of this step recorded its verdict while this one was scoring.
            decision = Decision.from_tags(mv.tags)
        if decision.approved and _was_champion(mv):
            # Its promotion happened; a later one may have moved past it, which stands.
            return decision, _result(client, model_name, version, True, ())
        current = _champion_version(client, model_name)
        if decision.approved and (stale := _stale(decision, current, version)):
            logger.info("%s: judging version %s again", stale, version)
            decision = _rejudged(gate.judge(version, current), decision, stale)
        return decision, _apply(client, lock, decision, mv, current, model_name)


def _rejudged(decision: Decision, first: Decision, why: str) -> Decision:
    """``decision`` noting that it replaces ``first``, made against an earlier champion."""
    before = first.details.get("champion_version")
    return Decision(
        approved=decision.approved,
        reasons=[*decision.reasons, f"info: judged again: {why}"],
        details={**decision.details, "rejudged": {"first_champion_version": before}},
    )


def test_split_arrays(store: Path, maps: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The store's test split as the gate scores it: images (N, 1, H, W) float32 in [0, 1],
    maps (N, H, W) float32, labels (N,)."""
    from components.data_transfer import materialize
    from model_lib.data.loader import open_split
    from model_lib.data.store import IMAGE_SCALE

    data = open_split(materialize(Path(store)), materialize(Path(maps)), "test")
    images = (np.asarray(data.images, dtype=np.float32) / np.float32(IMAGE_SCALE))[:, None]
    return images, np.asarray(data.maps, dtype=np.float32), np.asarray(data.labels)


def _log_decision(decision: Decision, result: PromotionResult, tracking_uri: str, run_id: str):
    from components.tracking import step_run

    with step_run(tracking_uri, run_id, "promote"):
        mlflow.set_tags(
            {
                "version": result.version,
                VALIDATION_STATUS_TAG: APPROVED if decision.approved else REJECTED,
                "champion": result.champion or "none",
            }
        )
        mlflow.log_dict(decision.to_dict(), "promotion/decision.json")


def promote_step(
    store: Path,
    maps: Path,
    version: str,
    policy: Any,
    *,
    tracking_uri: str,
    parent_run_id: str,
) -> tuple[Decision, PromotionResult]:
    """The pipeline's promote step: the gate against the champion on the test split."""
    from components.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    images, maps_, labels = test_split_arrays(store, maps)
    decision, result = run_promotion(
        policy_from_mapping(policy, "promotion_policy"),
        images,
        maps_,
        labels,
        challenger_version=version,
        tracking_uri=uri,
    )
    _log_decision(decision, result, uri, parent_run_id)
    for line in decision.reasons:
        logger.info("gate: %s", line)
    return decision, result


def reject_step(
    version: str, floor_reasons: str, *, tracking_uri: str, parent_run_id: str
) -> PromotionResult:
    """The pipeline's other branch: the version missed a floor, so it is rejected without a
    comparison (the champion stays)."""
    from components.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    reasons = floor_reasons.splitlines()
    decision = Decision(approved=False, reasons=reasons, details={"gate": "floors"})
    result = promote(decision, version, tracking_uri=uri)
    _log_decision(decision, result, uri, parent_run_id)
    logger.info(
        "version %s rejected: %s", version, "; ".join(r for r in reasons if r.startswith("fail"))
    )
    return result


@step_component
def promote_challenger(
    store: Input[Dataset],
    maps: Input[Dataset],
    version: str,
    promotion_policy: dict,
    tracking_uri: str,
    parent_run_id: str,
) -> NamedTuple("PromoteOutputs", [("approved", bool), ("champion", str)]):
    """Champion/challenger gate on the test split; moves the aliases on approval."""
    from components.promote import promote_step

    decision, result = promote_step(
        store.path,
        maps.path,
        version,
        promotion_policy,
        tracking_uri=tracking_uri,
        parent_run_id=parent_run_id,
    )
    return (decision.approved, result.champion or "")


@step_component
def reject_challenger(version: str, floor_reasons: str, tracking_uri: str, parent_run_id: str):
    """Tag the version rejected with the floors it missed."""
    from components.promote import reject_step

    reject_step(version, floor_reasons, tracking_uri=tracking_uri, parent_run_id=parent_run_id)
