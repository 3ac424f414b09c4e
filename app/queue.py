"""Redis and RQ plumbing shared by the API and the worker."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from app.jobs import JOB_FUNCTION, EditJob
from app.settings import Settings

WORKER_KEY_PREFIX = "soundedit:worker:"  # one hash per live worker, with a short TTL
CANCEL_KEY_PREFIX = "soundedit:cancel:"  # set while a running edit should stop
ACTIVE_KEY_PREFIX = "soundedit:active:"  # set of a client's queued and running edit ids
IDEMPOTENCY_KEY_PREFIX = "soundedit:idempotency:"
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def connect(settings: Settings) -> Redis:
    return Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=10)


def queue_name(settings: Settings, profile: str) -> str:
    """One queue per profile, so an edit only ever reaches a worker that has its models."""
    return f"{settings.queue_name}:{profile}"


def edit_queue(redis: Redis, settings: Settings, profile: str) -> Queue:
    return Queue(queue_name(settings, profile), connection=redis, serializer=JSONSerializer)


def enqueue_edit(redis: Redis, settings: Settings, job: EditJob, meta: dict[str, Any]) -> Job:
    queue = edit_queue(redis, settings, job.profile)
    return queue.enqueue_call(
        JOB_FUNCTION,
        kwargs={"payload": job.model_dump(mode="json")},
        job_id=job.edit_id,
        timeout=settings.job_timeout_s,
        result_ttl=settings.result_ttl_s,
        failure_ttl=settings.result_ttl_s,
        meta=meta,
        description=f"edit {job.edit_id}",
    )


def fetch_edit(redis: Redis, edit_id: str) -> Job | None:
    try:
        return Job.fetch(edit_id, connection=redis, serializer=JSONSerializer)
    except Exception:  # rq raises NoSuchJobError, or a decode error for foreign keys
        return None


# RQ's job states, as the API names them.
STATUS_NAMES: dict[str, str] = {
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.SCHEDULED: "queued",
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}


def edit_status(job: Job) -> str:
    """The API's name for the job's state (as last fetched); a stopped edit is ``canceled``."""
    if job.meta.get("canceled"):
        return "canceled"
    status = job.get_status(refresh=False)
    key = status.value if isinstance(status, JobStatus) else str(status)
    return STATUS_NAMES.get(key, "queued")


def request_cancel(redis: Redis, edit_id: str, ttl_s: int) -> None:
    redis.set(CANCEL_KEY_PREFIX + edit_id, 1, ex=ttl_s)


def cancel_requested(redis: Redis, edit_id: str) -> bool:
    return bool(redis.exists(CANCEL_KEY_PREFIX + edit_id))


def live_workers(redis: Redis) -> list[dict[str, str]]:
    """What each running edit worker reports about itself (profile, loads, jobs, ...)."""
    workers = [
        text_hash(redis, as_text(key)) for key in redis.scan_iter(match=WORKER_KEY_PREFIX + "*")
    ]
    return [worker for worker in workers if worker]


def as_text(value: bytes | str) -> str:
    """Redis answers bytes unless the client decodes; both are accepted."""
    return value.decode() if isinstance(value, bytes) else value


def text_hash(redis: Redis, key: str) -> dict[str, str]:
    """A Redis hash as ``str -> str``."""
    raw: dict[bytes | str, bytes | str] = redis.hgetall(key)
    return {as_text(k): as_text(v) for k, v in raw.items()}


def isoformat(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
