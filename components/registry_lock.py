"""A mutex kept in the model registry itself, for registry work that must not interleave across
processes and machines: two promotion gates reading the same champion and both moving it.

MLflow has no lock API, but creating a registered model is atomic and unique by name in every
store (the name is the primary key, in an embedded sqlite file and behind ``mlflow server``
alike), so of several concurrent ``create_registered_model(name)`` calls exactly one succeeds:
its caller holds the lock until it deletes the model. The lock model's tags say who holds it,
since when, and when it last showed a sign of life (a heartbeat thread refreshes that while the
lock is held), so a lock left behind by a killed process is told apart from a slow holder and
broken once it has been silent for ``ttl_s``.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.registry import registry_client

logger = logging.getLogger(__name__)

HOLDER_TAG, TOKEN_TAG = "lock.holder", "lock.token"
ACQUIRED_TAG, HEARTBEAT_TAG = "lock.acquired_at", "lock.heartbeat_at"
DEFAULT_TTL_S = 120.0
# A waiting gate may wait for one that re-scores a model inside the lock.
DEFAULT_TIMEOUT_S = 600.0
_TAKEN, _GONE = "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"


class LockTimeout(TimeoutError):
    """The lock stayed held past the wait; the message names the lock and its holder."""


class LockLost(RuntimeError):
    """The lock no longer carries this holder's token (it was broken as stale)."""


def promotion_lock_name(model_name: str) -> str:
    """The lock that guards ``model_name``'s ``champion`` and ``previous_champion``."""
    return f"{model_name}.promotion-lock"


@dataclass(frozen=True)
class LockState:
    """A lock as the registry shows it; ``seen_at``: its last sign of life (epoch seconds)."""

    token: str
    holder: str
    seen_at: float

    def age(self) -> float:
        return time.time() - self.seen_at


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_lock(client: MlflowClient, name: str) -> LockState | None:
    """The lock ``name`` as the registry has it now, or None when nobody holds it."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == _GONE:
            return None
        raise
    tags = model.tags
    try:
        seen = max(float(tags.get(ACQUIRED_TAG, 0)), float(tags.get(HEARTBEAT_TAG, 0)))
    except ValueError:
        seen = 0.0
    # Untagged (made by hand): the server's creation time is all there is.
    seen = seen or (model.creation_timestamp or 0) / 1000
    return LockState(tags.get(TOKEN_TAG, ""), tags.get(HOLDER_TAG, "unknown"), seen)


def _create(client: MlflowClient, name: str, token: str, holder: str) -> bool:
    """Try once to create the lock model; True if this call made it."""
    now = time.time()
    try:
        client.create_registered_model(
            name,
            tags={HOLDER_TAG: holder, TOKEN_TAG: token, ACQUIRED_TAG: repr(now)},
            description=f"lock held by {holder} since {_stamp(now)}; deleted on release",
        )
    except MlflowException as err:
        # _GONE: the store found the name taken, then the holder released it before it could
        # read it back. Taken either way, try again.
        if err.error_code in (_TAKEN, _GONE):
            return False
        raise
    return True


def _delete(client: MlflowClient, name: str) -> None:
    try:
        client.delete_registered_model(name)
    except MlflowException as err:
        if err.error_code != _GONE:
            raise


def _break_stale(client: MlflowClient, name: str, stale: LockState, ttl_s: float) -> bool:
    """Delete ``name`` if it still is the stale lock ``stale``; False if another waiter is at it.

    Breaking goes through a second lock, ``<name>.break``, so that of several waiters that all
    saw the same stale lock only one deletes it, and the others, coming after, find the new
    holder's lock instead of deleting that too.
    """
    guard = f"{name}.break"
    if not _create(client, guard, uuid.uuid4().hex, f"breaking {name}"):
        # Held for two requests only; a breaker that died in between leaves it behind.
        if (other := read_lock(client, guard)) is not None and other.age() > ttl_s:
            _delete(client, guard)
        return False
    try:
        current = read_lock(client, name)
        if current is not None and current.token == stale.token:
            _delete(client, name)
            logger.warning(
                "broke stale lock %s held by %s: no sign of life since %s (%.0f s > ttl %.0f s)",
                name,
                stale.holder,
                _stamp(stale.seen_at),
                stale.age(),
                ttl_s,
            )
    finally:
        _delete(client, guard)
    return True


@dataclass
class HeldLock:
    """The lock this process holds."""

    client: MlflowClient
    name: str
    token: str
    holder: str

    def ensure_held(self) -> None:
        """Check just before a guarded write that the lock was not broken meanwhile.

        Raises:
            LockLost: it was broken as stale, or is held by someone else now.
        """
        current = read_lock(self.client, self.name)
        if current is None or current.token != self.token:
            by = "nobody" if current is None else current.holder
            raise LockLost(f"lock {self.name} of {self.holder} was broken; held by {by} now")


def _acquire(
    client: MlflowClient, name: str, holder: str, *, ttl_s: float, timeout_s: float, poll_s: float
) -> HeldLock:
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    delay, waiting_for = poll_s, None
    while True:
        if _create(client, name, token, holder):
            break
        current = read_lock(client, name)
        if current is None:
            continue  # released between the two calls
        if current.token == token:
            break  # this create went through, but its answer was lost and the retry refused
        if current.age() > ttl_s and _break_stale(client, name, current, ttl_s):
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LockTimeout(
                f"lock {name} still held by {current.holder} (last sign of life "
                f"{_stamp(current.seen_at)}) after waiting {timeout_s:g} s"
            )
        if current.token != waiting_for:
            logger.info("waiting for lock %s, held by %s", name, current.holder)
            waiting_for = current.token
        # Jitter, so that waiters that collided once do not collide again.
        time.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, 5.0)
    logger.info("lock %s acquired by %s", name, holder)
    return HeldLock(client, name, token, holder)


def _heartbeat(tracking_uri: str, lock: HeldLock, every_s: float, stop: threading.Event) -> None:
    """Refresh the lock's sign of life until ``stop`` is set or the lock is gone."""
    client = None
    while not stop.wait(every_s):
        try:
            # Its own client: the main thread's store is not shared with this one.
            client = client or registry_client(tracking_uri)
            current = read_lock(client, lock.name)
            if current is None or current.token != lock.token:
                return
            client.set_registered_model_tag(lock.name, HEARTBEAT_TAG, repr(time.time()))
        except Exception as err:
            # A missed beat is retried; the holder's work goes on either way.
            logger.warning("lock %s: heartbeat failed: %s", lock.name, err)


@contextmanager
def registry_lock(
    tracking_uri: str,
    name: str,
    *,
    holder: str = "",
    ttl_s: float = DEFAULT_TTL_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = 0.1,
) -> Iterator[HeldLock]:
    """Hold the registry lock ``name`` for the ``with`` block; released however the block ends.

    Args:
        tracking_uri: the registry (``sqlite:///...`` or an ``mlflow server``).
        name: a registered model name that is used for nothing else.
        holder: who is asking, for the log and the lock's tags (host and pid are added).
        ttl_s: a lock silent for longer than this is broken (its holder refreshes it every
            ``ttl_s / 4`` while alive).
        timeout_s: how long to wait for a live holder before giving up.
        poll_s: the first wait between tries; it doubles up to 5 s.

    Raises:
        LockTimeout: a live holder kept the lock for ``timeout_s``.
        RegistryUnreachable: the registry does not answer.
    """
    client = registry_client(tracking_uri)
    who = f"{holder + ' ' if holder else ''}({socket.gethostname()} pid {os.getpid()})"
    lock = _acquire(client, name, who, ttl_s=ttl_s, timeout_s=timeout_s, poll_s=poll_s)
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(tracking_uri, lock, ttl_s / 4, stop), daemon=True
    )
    beat.start()
    try:
        yield lock
    finally:
        stop.set()
        beat.join()
        try:
            if (current := read_lock(client, name)) is not None and current.token == lock.token:
                _delete(client, name)
                logger.info("lock %s released by %s", name, who)
            else:
                logger.warning("lock %s of %s was broken while held; nothing to release", name, who)
        except Exception as err:
            # The guarded work is done or already failing: a lock left behind only delays others.
            logger.warning(
                "lock %s: release failed (%s); it will be broken after %.0f s", name, err, ttl_s
            )
