"""Recovery of edits whose worker died mid-run, and cleanup of expired edits' files.

RQ notices an abandoned job only when its registry entry expires (job timeout + a minute and a
maintenance interval: over an hour by default), and then fails it. Every worker here instead
checks, every few seconds, that the owner of each running edit still has a live status key
(``HEARTBEAT_TTL_S``), and puts the orphans back at the front of their queue.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import WatchError
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from app.jobs import Phase
from app.problems import problem_body
from app.queue import WORKER_KEY_PREFIX, fetch_edit
from app.storage import LocalStorage

logger = logging.getLogger(__name__)

ORPHAN_FILE_AGE_S = 3600.0  # files of an edit with no job record are removed after this


def requeue_abandoned(redis: Redis, queue: Queue, max_attempts: int) -> list[str]:
    """Requeue (or fail, after ``max_attempts`` runs) running edits whose worker is gone.

    One transaction takes every orphan out of the started registry and puts it back at the
    front of the queue (in order) or among the failed: no orphan is lost half-way, two
    watchdogs never both recover one, and a batch lost with its worker is found whole by the
    next worker to dequeue.
    """
    registry = StartedJobRegistry(queue=queue)
    orphans: list[tuple[Job, str]] = []  # (job, its registry entry)
    for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
        job = fetch_edit(redis, job_id)
        if job is None or job.get_status(refresh=False) != JobStatus.STARTED:
            continue
        if job.worker_name and redis.exists(WORKER_KEY_PREFIX + job.worker_name):
            continue  # its worker is alive
        orphans.append((job, f"{job_id}:{execution_id}" if execution_id else job_id))
    if not orphans:
        return []
    with redis.pipeline() as pipe:
        pipe.watch(registry.key)
        if any(pipe.zscore(registry.key, entry) is None for _, entry in orphans):
            return []  # another worker is recovering them
        pipe.multi()
        for job, entry in reversed(orphans):  # each goes to the front: the first ends up first
            pipe.zrem(registry.key, entry)
            attempts = int(job.meta.get("attempts", 1))
            if attempts >= max_attempts:
                _fail(job, queue, f"its worker died {attempts} times while running it", pipe)
                continue
            job.meta.update(phase=Phase.queued, step=0)
            queue.enqueue_job(job, pipeline=pipe, at_front=True)  # saves the meta too
        try:
            pipe.execute()
        except WatchError:
            return []  # the registry changed meanwhile; the next round looks again
    for job, _ in orphans:
        logger.warning("edit %s lost its worker %s; recovered", job.id, job.worker_name)
    return [job.id for job, _ in orphans]


def _fail(job: Job, queue: Queue, reason: str, pipe: Pipeline) -> None:
    job.meta.update(
        phase=Phase.done,
        error=problem_body(
            500, "worker-lost", f"the edit was given up: {reason}", title="Edit failed"
        ),
    )
    job.set_status(JobStatus.FAILED, pipeline=pipe)
    job.save(pipeline=pipe)
    FailedJobRegistry(queue=queue).add(
        job, ttl=job.failure_ttl or -1, exc_string=reason, pipeline=pipe
    )


def remove_expired_files(
    redis: Redis, storage: LocalStorage, min_age_s: float = ORPHAN_FILE_AGE_S
) -> int:
    """Delete stored files of edits whose job record expired (result TTL) or never existed."""
    root = storage.path("edits")
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for folder in root.iterdir():
        if not folder.is_dir() or now - folder.stat().st_mtime < min_age_s:
            continue
        if not Job.exists(folder.name, connection=redis):
            storage.delete_prefix(f"edits/{folder.name}")
            removed += 1
    return removed
