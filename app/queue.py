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
    """The API's name for the job's state (as last fetched)."""
    status = job.get_status(refresh=False)
    key = status.value if isinstance(status, JobStatus) else str(status)
    return STATUS_NAMES.get(key, "queued")


def live_workers(redis: Redis) -> list[dict[str, str]]:
    """What each running edit worker reports about itself (profile, loads, jobs, ...)."""
    workers = []
    for key in redis.scan_iter(match=WORKER_KEY_PREFIX + "*"):
        raw: dict[bytes, bytes] = redis.hgetall(key)  # type: ignore[assignment]
        if raw:
            workers.append({k.decode(): v.decode() for k, v in raw.items()})
    return workers


def isoformat(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None
