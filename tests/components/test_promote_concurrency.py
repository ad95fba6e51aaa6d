"""Two promotion gates at once, and the registry lock that makes them take turns.

Two gates run in two processes, released together by a barrier, against a real ``mlflow server``
(artifacts on S3, moto) and an embedded sqlite store. Both judge their challenger against the
same champion v1; under the lock, the second sees the champion the first left and judges again.
Whichever lands first, the best version ends ``champion`` and the aliases' history is one line.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from components.promote import (
    ALIAS_HISTORY_TAG,
    Decision,
    PromotionPolicy,
    StaleDecision,
    promote,
    run_promotion,
)
from components.register import register_model
from components.registry_lock import (
    ACQUIRED_TAG,
    HOLDER_TAG,
    TOKEN_TAG,
    LockLost,
    LockTimeout,
    promotion_lock_name,
    read_lock,
    registry_lock,
)
from model_lib.metrics import cc
from model_lib.models import build_model
from model_lib.presets import ExperimentConfig
from tests.components.conftest import Backend, MlflowServer

pytestmark = pytest.mark.integration

# Only mean CC decides, so that the order v1 < v2 < v3 is set by construction (below).
POLICY = {
    "floors": {"auc_macro": 0.0, "cc_mean": -1.0},
    "versus_champion": {
        "auc_macro": {"min_delta": -1.0, "min_ci_low": -1.0},
        "cc_mean": {"min_delta": 0.05},
        "alpha": 0.05,
        "require_significant_improvement": True,
    },
    "bootstrap": {"n_boot": 200, "seed": 0, "confidence": 0.95},
}
RACE_MODEL = "race"
FIRST = Decision(True, ["pass: first model"], {"compared_to_champion": False})
HISTORY_LINE = re.compile(r"^\S+ (champion|previous_champion) -> (v\d+) \(was (none|v\d+)\)$")


def lineage(run: str) -> dict[str, str]:
    return {"data_rev": "r1", "data_md5": "d41d8", "git_sha": "911c390",
            "pipeline_run_id": run, "preset": "ci"}  # fmt: skip


@dataclass(frozen=True)
class Trio:
    """Weights of v1, v2, v3 and the test split (npz) on which their mean CC is ordered."""

    weights: tuple[Path, ...]
    split: Path


def _saliency(network: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """What the packaged model's ``predict`` returns as ``saliency``."""
    with torch.inference_mode():
        return network(torch.from_numpy(images))["saliency"].float().exp()[:, 0].numpy()


@pytest.fixture(scope="module")
def trio(ci_config: ExperimentConfig, tmp_path_factory: pytest.TempPathFactory) -> Trio:
    """v3: a random network; v2: v3 with its weights perturbed; v1: another random network. The
    ground-truth maps are v3's own, so v3 scores CC 1, v2 (near v3) less, v1 (unrelated) ~0."""
    folder = tmp_path_factory.mktemp("trio")
    images = np.random.default_rng(0).random((12, 1, *ci_config.model.input_hw), dtype=np.float32)
    torch.manual_seed(3)
    v3 = build_model(ci_config.model).eval()
    v2 = build_model(ci_config.model).eval()
    v2.load_state_dict(v3.state_dict())
    noise = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in v2.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=noise) * 0.3 * p.std())
    torch.manual_seed(1)
    v1 = build_model(ci_config.model).eval()
    maps = _saliency(v3, images)
    cc_means = [float(cc(_saliency(n, images), maps).mean()) for n in (v1, v2, v3)]
    assert cc_means[0] + 0.3 < cc_means[1] < cc_means[2] - 0.2, cc_means  # clearly ordered
    weights = tuple(folder / f"v{i}.pt" for i in (1, 2, 3))
    for path, network in zip(weights, (v1, v2, v3), strict=True):
        torch.save(network.state_dict(), path)
    split = folder / "split.npz"
    np.savez(split, images=images, maps=maps, labels=np.arange(len(images)) % 3)
    return Trio(weights, split)


@pytest.fixture(scope="module")
def registries(
    trio: Trio,
    ci_config: ExperimentConfig,
    mlflow_server: MlflowServer,
    migrated_db: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Backend]:
    """The server and an embedded store, each with v1, v2, v3 of ``RACE_MODEL`` registered."""
    folder = tmp_path_factory.mktemp("race-sqlite")
    shutil.copyfile(migrated_db, folder / "mlflow.db")
    backends = {
        "http": Backend(mlflow_server.url),
        "sqlite": Backend(f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")),
    }
    for backend in backends.values():
        for i, weights in enumerate(trio.weights, start=1):
            register_model(weights, ci_config, {}, lineage(f"race-{i}"), model_name=RACE_MODEL,
                           tracking_uri=backend.tracking_uri,
                           artifact_location=backend.artifact_location)  # fmt: skip
    return backends


_barrier: Any = None


def _start_gate_process(barrier: Any) -> None:
    global _barrier
    _barrier = barrier
    torch.set_num_threads(1)
    logging.basicConfig(format="%(processName)s %(name)s: %(message)s")
    logging.getLogger("components").setLevel(logging.INFO)


def _gate(uri: str, model_name: str, version: str, split: str) -> dict[str, Any]:
    """One promotion gate, in a process of its own, released with the other by the barrier."""
    data = np.load(split)
    _barrier.wait(timeout=120)
    decision, result = run_promotion(PromotionPolicy.model_validate(POLICY), data["images"],
                                     data["maps"], data["labels"], challenger_version=version,
                                     tracking_uri=uri, model_name=model_name)  # fmt: skip
    return {"approved": decision.approved, "rejudged": decision.details.get("rejudged"),
            "champion_version": decision.details.get("champion_version"),
            "champion": result.champion}  # fmt: skip


@pytest.fixture(scope="module")
def gate_processes() -> Iterator[ProcessPoolExecutor]:
    """Two worker processes, kept for both registries. Forked from a server process that imported
    torch and MLflow once (the test process has threads and must not fork itself)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(2)
    with ProcessPoolExecutor(2, mp_context=context, initializer=_start_gate_process,
                             initargs=(barrier,)) as pool:  # fmt: skip
        yield pool


def _history(client: MlflowClient, name: str) -> dict[str, list[tuple[str, str]]]:
    """Every alias move recorded on any version: {alias: [(was, to), ...]}."""
    moves: dict[str, list[tuple[str, str]]] = {"champion": [], "previous_champion": []}
    for mv in client.search_model_versions(f"name='{name}'"):
        for line in mv.tags.get(ALIAS_HISTORY_TAG, "").splitlines():
            match = HISTORY_LINE.match(line)
            assert match, line
            alias, to, was = match.groups()
            moves[alias].append((was, to))
    return moves


def _chain(moves: list[tuple[str, str]]) -> list[str]:
    """The versions an alias went through, from none; fails unless the moves form one line
    (two moves away from the same version are two gates that both moved it)."""
    after: dict[str, str] = {}
    for was, to in moves:
        assert was not in after, f"moved from {was} twice: to {after[was]} and to {to}"
        after[was] = to
    chain, at = [], "none"
    while at in after:
        at = after[at]
        chain.append(at)
    assert len(chain) == len(moves), f"moves off the line: {moves}"
    return chain


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["http", "sqlite"])
def test_two_gates_at_once_end_with_the_best_champion_and_one_history(
    kind: str,
    registries: dict[str, Backend],
    trio: Trio,
    gate_processes: ProcessPoolExecutor,
) -> None:
    uri = registries[kind].tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    name = RACE_MODEL
    promote(FIRST, "1", tracking_uri=uri, model_name=name)

    futures = {v: gate_processes.submit(_gate, uri, name, v, str(trio.split)) for v in ("2", "3")}
    results = {v: f.result(timeout=240) for v, f in futures.items()}

    aliases = {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    moves = _history(client, name)
    champions, previous = _chain(moves["champion"]), _chain(moves["previous_champion"])
    assert champions[-1] == "v3" == f"v{aliases['champion']}"
    assert previous == champions[:-1] and f"v{aliases['previous_champion']}" == previous[-1]

    # Both judged against v1; the one that took the lock second judged again, against the
    # champion the first left: v3 beats v2, v2 loses to v3.
    rejudged = [v for v, r in results.items() if r["rejudged"]]
    assert len(rejudged) == 1, f"expected one gate to find the champion moved: {results}"
    second = rejudged[0]
    first = "3" if second == "2" else "2"
    assert results[second]["rejudged"] == {"first_champion_version": "1"}
    assert results[first]["champion_version"] == "1"
    assert results[second]["champion_version"] == first
    assert champions == (["v1", "v2", "v3"] if first == "2" else ["v1", "v3"])
    statuses = {v: client.get_model_version(name, v).tags["validation_status"] for v in "123"}
    assert statuses == {"1": "approved", "2": "approved" if first == "2" else "rejected",
                        "3": "approved"}  # fmt: skip
    assert results["2"]["approved"] == (first == "2") and results["3"]["approved"]
    left = client.search_registered_models(f"name LIKE '{name}%'")
    assert [m.name for m in left] == [name]  # no lock left behind


# --- the lock itself (embedded store and server alike) ------------------------------------------


def _version_to_promote(client: MlflowClient, name: str) -> None:
    """A model with one version; promote() reads tags and aliases only, never the files."""
    client.create_registered_model(name)
    client.create_model_version(name, "s3://nowhere/model", tags={"pipeline_run_id": "r"})


def _leave_lock(client: MlflowClient, name: str, holder: str, age_s: float) -> None:
    """A lock as a gate killed ``age_s`` seconds ago would have left it."""
    tags = {HOLDER_TAG: holder, TOKEN_TAG: "t-" + holder, ACQUIRED_TAG: repr(time.time() - age_s)}
    client.create_registered_model(name, tags=tags)


def test_a_stale_lock_is_broken_and_a_live_one_is_waited_for(
    backend: Backend, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    uri = backend.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    lock = promotion_lock_name(model_name)
    _version_to_promote(client, model_name)

    _leave_lock(client, lock, "gate on node-a", age_s=3600)
    with caplog.at_level(logging.INFO, logger="components"):
        result = promote(FIRST, "1", tracking_uri=uri, model_name=model_name)
    assert result.champion == "1"
    (broke,) = [r.getMessage() for r in caplog.records if "broke stale lock" in r.getMessage()]
    assert lock in broke and "held by gate on node-a" in broke
    assert read_lock(client, lock) is None

    _leave_lock(client, lock, "gate on node-b", age_s=1)
    started = time.monotonic()
    held_by_b = rf"lock {re.escape(lock)} still held by gate on node-b"
    with pytest.raises(LockTimeout, match=held_by_b), registry_lock(uri, lock, timeout_s=0.5):
        pytest.fail("acquired a lock that another holder keeps alive")
    assert time.monotonic() - started < 5
    assert read_lock(client, lock).holder == "gate on node-b"  # a live lock is left alone


def test_the_lock_is_released_when_the_guarded_work_fails(
    backend: Backend, model_name: str
) -> None:
    uri = backend.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    lock = promotion_lock_name(model_name)
    _version_to_promote(client, model_name)
    client.create_model_version(model_name, "s3://nowhere/model", tags={"pipeline_run_id": "r2"})
    promote(FIRST, "1", tracking_uri=uri, model_name=model_name)
    with pytest.raises(StaleDecision):  # raised inside the lock
        promote(FIRST, "2", tracking_uri=uri, model_name=model_name)
    assert read_lock(client, lock) is None
    with pytest.raises(KeyError), registry_lock(uri, lock) as held:
        assert read_lock(client, lock).token == held.token
        raise KeyError("boom")
    assert read_lock(client, lock) is None


def test_a_holder_whose_lock_was_broken_finds_out_and_leaves_the_new_lock_alone(
    sqlite_backend: Backend, model_name: str
) -> None:
    uri, lock = sqlite_backend.tracking_uri, promotion_lock_name(model_name)
    client = MlflowClient(uri, registry_uri=uri)
    with registry_lock(uri, lock) as held:
        held.ensure_held()
        # A waiter took this holder for dead: broke the lock and took it.
        client.delete_registered_model(lock)
        _leave_lock(client, lock, "gate on node-c", age_s=0)
        with pytest.raises(LockLost, match="held by gate on node-c"):
            held.ensure_held()
    assert read_lock(client, lock).holder == "gate on node-c"


def test_holders_take_turns(backend: Backend, model_name: str) -> None:
    """Three threads, each its own holder, increment a tag three times under the lock with a
    pause between read and write: no update is lost, and never two are inside at once."""
    uri = backend.tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model(model_name, tags={"count": "0"})
    lock = promotion_lock_name(model_name)
    inside, most, errors = [0], [0], []
    guard = threading.Lock()

    def work() -> None:
        try:
            for _ in range(3):
                with registry_lock(uri, lock, poll_s=0.02):
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    count = int(client.get_registered_model(model_name).tags["count"])
                    time.sleep(0.05)
                    client.set_registered_model_tag(model_name, "count", str(count + 1))
                    with guard:
                        inside[0] -= 1
        except Exception as err:  # reported below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert (client.get_registered_model(model_name).tags["count"], most[0]) == ("9", 1)
    assert read_lock(client, lock) is None


def test_a_holder_slower_than_the_ttl_is_kept_alive_by_its_heartbeat(
    sqlite_backend: Backend, model_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    uri, lock, ttl = sqlite_backend.tracking_uri, promotion_lock_name(model_name), 0.5
    released, acquired = [0.0], [0.0]

    def wait_for_it() -> None:
        with registry_lock(uri, lock, ttl_s=ttl, timeout_s=30, poll_s=0.05):
            acquired[0] = time.monotonic()

    with caplog.at_level(logging.WARNING, logger="components"):
        with registry_lock(uri, lock, ttl_s=ttl):
            waiter = threading.Thread(target=wait_for_it)
            waiter.start()
            time.sleep(4 * ttl)
            released[0] = time.monotonic()
        waiter.join(timeout=30)
    assert acquired[0] > released[0] > 0
    assert [r.getMessage() for r in caplog.records if "broke" in r.getMessage()] == []
