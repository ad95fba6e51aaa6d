"""Operations on the registered model: roll the champion back, and show where a version came
from.

Rollback re-points ``champion`` at the version ``previous_champion`` names, with no retraining.
Both aliases then name that version, which is also how a repeated rollback recognises that it
has nothing left to do: it is idempotent, and every move is recorded (``alias_history`` on the
version that gets the alias, ``rolled_back_at`` / ``rolled_back_to`` on the one that loses it).
The next approved promotion moves the aliases on as usual.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.promote import ALIAS_HISTORY_TAG, REASONS_TAG, append_alias_history
from components.registry import (
    CHAMPION,
    MODEL_NAME,
    PREVIOUS_CHAMPION,
    registry_client,
    utc_now,
    version_by_alias,
)
from components.registry_lock import promotion_lock_name, registry_lock

logger = logging.getLogger(__name__)

ROLLED_BACK_AT_TAG, ROLLED_BACK_TO_TAG = "rolled_back_at", "rolled_back_to"
LINEAGE_TAGS = ("data_rev", "data_md5", "git_sha", "preset", "overrides", "pipeline_run_id",
                "pretrained_weights", "pretrained_sha256")  # fmt: skip


class NothingToRollBack(LookupError):
    """There is no champion, or no previous champion to go back to."""


@dataclass(frozen=True)
class Rollback:
    """The champion before and after; ``moved`` is False when it was already rolled back."""

    champion_was: str
    champion: str
    moved: bool

    def describe(self, model_name: str = MODEL_NAME) -> str:
        if not self.moved:
            return f"{model_name}: champion is already v{self.champion} (rolled back before)"
        return f"{model_name}: champion v{self.champion_was} -> v{self.champion}"


def rollback_champion(tracking_uri: str, model_name: str = MODEL_NAME) -> Rollback:
    """Point ``champion`` at ``previous_champion``'s version.

    Raises:
        RegistryUnreachable: the tracking server does not answer.
        NothingToRollBack: no champion or no previous champion (the message says which).
    """
    client = registry_client(tracking_uri)
    # The promotion lock: a rollback must not interleave with a promotion moving the aliases.
    lock = promotion_lock_name(model_name)
    with registry_lock(tracking_uri, lock, holder="model rollback"):
        return _rollback(client, tracking_uri, model_name)


def _rollback(client: MlflowClient, tracking_uri: str, model_name: str) -> Rollback:
    champion = version_by_alias(client, model_name, CHAMPION)
    previous = version_by_alias(client, model_name, PREVIOUS_CHAMPION)
    if champion is None:
        raise NothingToRollBack(f"{model_name} has no {CHAMPION} at {tracking_uri}")
    if previous is None:
        raise NothingToRollBack(
            f"{model_name} has no {PREVIOUS_CHAMPION} to roll v{champion.version} back to"
        )
    current, target = str(champion.version), str(previous.version)
    if current == target:
        return Rollback(current, target, moved=False)
    now = utc_now()
    client.set_registered_model_alias(model_name, CHAMPION, target)
    line = f"{now} {CHAMPION} -> v{target} (rollback from v{current})"
    append_alias_history(client, model_name, target, line)
    client.set_model_version_tag(model_name, current, ROLLED_BACK_AT_TAG, now)
    client.set_model_version_tag(model_name, current, ROLLED_BACK_TO_TAG, target)
    logger.info("%s: %s rolled back from v%s to v%s", model_name, CHAMPION, current, target)
    return Rollback(current, target, moved=True)


def version_lineage(
    tracking_uri: str, version_or_alias: str, model_name: str = MODEL_NAME
) -> dict[str, Any]:
    """Everything the registry knows about where a version came from: lineage tags, test
    metrics, the gate's verdict and reasons, the aliases on it, the run that logged it.

    Raises:
        LookupError: no such version or alias (the message names it).
    """
    client = registry_client(tracking_uri)
    if version_or_alias.isdigit():
        try:
            mv = client.get_model_version(model_name, version_or_alias)
        except MlflowException as err:
            raise LookupError(f"{model_name} has no version {version_or_alias}") from err
    else:
        mv = version_by_alias(client, model_name, version_or_alias)
        if mv is None:
            raise LookupError(f"{model_name} has no alias {version_or_alias!r}")
    tags = dict(mv.tags)
    aliases = client.get_registered_model(model_name).aliases
    return {
        "model": model_name,
        "version": str(mv.version),
        "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
        "lineage": {k: tags.get(k, "") for k in LINEAGE_TAGS},
        "metrics": json.loads(tags.get("metrics", "{}")),
        "validation_status": tags.get("validation_status", "not judged"),
        "reasons": tags.get(REASONS_TAG, "").splitlines(),
        "alias_history": tags.get(ALIAS_HISTORY_TAG, "").splitlines(),
        "run_id": mv.run_id,
        "source": mv.source,
        "created": mv.creation_timestamp,
    }


def lineage_text(info: dict[str, Any]) -> str:
    """The lineage as a short human-readable block."""
    lines = [f"{info['model']} version {info['version']}"
             + (f" ({', '.join(info['aliases'])})" if info["aliases"] else "")]  # fmt: skip
    lines += [f"  {key}: {value}" for key, value in info["lineage"].items()]
    keep = ("classification.auc_macro", "classification.accuracy", "saliency.cc.mean")
    metrics = {k: v for k, v in info["metrics"].items() if k in keep}
    if metrics:
        lines.append("  test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    lines.append(f"  gate: {info['validation_status']}")
    lines += [f"    {reason}" for reason in info["reasons"]]
    lines += [f"  alias: {line}" for line in info["alias_history"]]
    lines.append(f"  MLflow run: {info['run_id']}")
    return "\n".join(lines)
