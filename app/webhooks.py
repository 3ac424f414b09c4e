"""Webhooks: signed JSON notifications of an edit's events, delivered with retries.

The API and the worker only *schedule* deliveries in Redis (cheap, never blocking an edit); a
dispatcher thread in each worker process sends them, so a slow or dead receiver can neither fail
nor stall an optimisation, and a delivery outlives the process that scheduled it.

Receivers verify ``X-Soundedit-Signature: sha256=<hex>``, the HMAC-SHA256 under the shared
secret of ``<X-Soundedit-Timestamp>.<raw body>``, and should refuse stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from redis import Redis

logger = logging.getLogger(__name__)

EVENTS = ("running", "succeeded", "failed", "canceled")
DEFAULT_EVENTS = ("succeeded", "failed", "canceled")
SIGNATURE_HEADER = "X-Soundedit-Signature"
TIMESTAMP_HEADER = "X-Soundedit-Timestamp"
EVENT_HEADER = "X-Soundedit-Event"

DUE_KEY = "soundedit:webhooks:due"  # sorted set: delivery id -> time it is due
DELIVERY_PREFIX = "soundedit:webhook:"  # hash per delivery: url, body, event, attempts
DELIVERY_TTL_S = 7 * 24 * 3600
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 1.0  # waits 1, 2, 4, 8, 16 s between attempts
TIMEOUT_S = 5.0


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def parse_events(raw: str | None) -> tuple[str, ...]:
    """A comma-separated event filter; raises ValueError naming unknown events."""
    if raw is None or not raw.strip():
        return DEFAULT_EVENTS
    events = tuple(dict.fromkeys(e.strip() for e in raw.split(",") if e.strip()))
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise ValueError(f"unknown webhook events {unknown}; choose from {list(EVENTS)}")
    return events


def schedule(
    redis: Redis, url: str, event: str, payload: dict[str, Any], *, delay_s: float = 0.0
) -> str:
    """Record one delivery; a dispatcher sends it once due."""
    delivery_id = uuid.uuid4().hex
    key = DELIVERY_PREFIX + delivery_id
    body = json.dumps({"event": event, **payload}, separators=(",", ":"))
    with redis.pipeline() as pipe:
        pipe.hset(key, mapping={"url": url, "event": event, "body": body, "attempts": 0})
        pipe.expire(key, DELIVERY_TTL_S)
        pipe.zadd(DUE_KEY, {delivery_id: time.time() + delay_s})
        pipe.execute()
    return delivery_id


def notify(redis: Redis, meta: dict[str, Any], event: str, payload: dict[str, Any]) -> None:
    """Schedule ``event`` for an edit whose metadata asked for webhooks and that event."""
    webhook = meta.get("webhook")
    if webhook and event in webhook.get("events", ()):
        schedule(redis, webhook["url"], event, payload)


def _post(url: str, event: str, body: bytes, secret: str) -> None:
    timestamp = str(int(time.time()))
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "soundedit-webhooks",
            EVENT_HEADER: event,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        },
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (http/https checked on submit)
        response.read(1024)


def deliver_due(redis: Redis, secret: str, *, limit: int = 20) -> int:
    """Send the deliveries that are due; failures are rescheduled with exponential backoff."""
    now = time.time()
    sent = 0
    for raw_id in redis.zrangebyscore(DUE_KEY, 0, now, start=0, num=limit):
        delivery_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
        if not redis.zrem(DUE_KEY, delivery_id):
            continue  # another dispatcher claimed it
        key = DELIVERY_PREFIX + delivery_id
        record = {k.decode(): v.decode() for k, v in redis.hgetall(key).items()}  # type: ignore[union-attr]
        if not record:
            continue
        attempts = int(record["attempts"]) + 1
        try:
            _post(record["url"], record["event"], record["body"].encode(), secret)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            if attempts >= MAX_ATTEMPTS:
                logger.warning(
                    "webhook %s to %s dropped after %d attempts: %s",
                    record["event"],
                    record["url"],
                    attempts,
                    exc,
                )
                redis.delete(key)
            else:
                redis.hset(key, "attempts", attempts)
                redis.zadd(DUE_KEY, {delivery_id: now + BACKOFF_BASE_S * 2 ** (attempts - 1)})
            continue
        redis.delete(key)
        sent += 1
    return sent
