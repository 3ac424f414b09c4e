"""What a submission must pass before it is queued: back-pressure, per-client limits, idempotency."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from redis import Redis

from app.deps import ANONYMOUS
from app.problems import Problem
from app.queue import (
    ACTIVE_KEY_PREFIX,
    FINAL_STATUSES,
    IDEMPOTENCY_KEY_PREFIX,
    as_text,
    edit_status,
    fetch_edit,
)
from app.settings import Settings

RETRY_AFTER_BUSY_S = 10  # what a client is told to wait when the queue is full
MAX_IDEMPOTENCY_KEY_CHARS = 255


def check_queue_room(queue_length: int, settings: Settings) -> None:
    if queue_length >= settings.max_queue_length:
        raise Problem(
            503, "queue-full",
            f"{queue_length} edits are waiting, the most this server queues; try again later",
            headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
        )  # fmt: skip


def check_client_room(redis: Redis, client: str, settings: Settings) -> None:
    """At most ``max_active_per_key`` queued or running edits per API key."""
    if client == ANONYMOUS:
        return
    key = ACTIVE_KEY_PREFIX + client
    active = 0
    members: set[bytes | str] = redis.smembers(key)
    for raw in members:
        edit_id = as_text(raw)
        job = fetch_edit(redis, edit_id)
        if job is None or edit_status(job) in FINAL_STATUSES:
            redis.srem(key, edit_id)
        else:
            active += 1
    if active >= settings.max_active_per_key:
        raise Problem(
            429, "too-many-edits",
            f"this API key has {active} edits queued or running, the most allowed; "
            "wait for one to finish or cancel one",
            headers={"Retry-After": str(RETRY_AFTER_BUSY_S)},
        )  # fmt: skip


def track_active(redis: Redis, client: str, edit_id: str) -> None:
    if client != ANONYMOUS:
        redis.sadd(ACTIVE_KEY_PREFIX + client, edit_id)


def fingerprint(fields: dict[str, Any], files: dict[str, bytes]) -> str:
    """A digest of a request's content, to tell a retry from a different request."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode())
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def claim_idempotency_key(
    redis: Redis, client: str, key: str, edit_id: str, request_digest: str, ttl_s: int
) -> str | None:
    """Bind ``key`` to this request; returns the earlier edit's id if a retry, else None.

    The same key with a different request is a conflict (409).
    """
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS:
        raise Problem(
            422, "invalid-idempotency-key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters",
            field="Idempotency-Key",
        )  # fmt: skip
    redis_key = IDEMPOTENCY_KEY_PREFIX + client + ":" + hashlib.sha256(key.encode()).hexdigest()
    record = json.dumps({"edit_id": edit_id, "digest": request_digest})
    if redis.set(redis_key, record, nx=True, ex=ttl_s):
        return None
    stored: bytes | str | None = redis.get(redis_key)
    earlier = json.loads(stored or "{}")
    if earlier.get("digest") != request_digest:
        raise Problem(
            409, "idempotency-key-reused",
            "this Idempotency-Key was used with a different request",
            field="Idempotency-Key",
        )  # fmt: skip
    return str(earlier["edit_id"])


def release_idempotency_key(redis: Redis, client: str, key: str) -> None:
    """Forget a key whose request failed before it was queued, so a retry can succeed."""
    redis.delete(IDEMPOTENCY_KEY_PREFIX + client + ":" + hashlib.sha256(key.encode()).hexdigest())
