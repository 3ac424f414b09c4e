"""Finding queued edits that can join the one a worker just dequeued, and taking them.

Edits with equal ``EditJob.batch_key`` run as one batched optimisation on one device. A worker
takes companions only from the head of its queue (``SCAN_DEPTH`` per batch slot), so a
compatible edit can overtake only a few incompatible ones.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from pydantic import ValidationError
from rq import Queue
from rq.job import Job

from app.jobs import EditJob
from app.queue import fetch_edit

logger = logging.getLogger(__name__)

SCAN_DEPTH = 4  # queued edits looked at per free batch slot

# Move one job id from the queue to the queue's intermediate list, where RQ keeps the jobs a
# worker has taken but not yet started (and fails them if that worker dies before starting).
# 1 when this worker got it, 0 when it was gone (taken by another worker or canceled).
_TAKE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[1])
    return 1
end
return 0
"""


def batch_key(job: Job) -> Hashable | None:
    """The job's ``EditJob.batch_key``; None for a payload that is not a valid edit."""
    try:
        return EditJob.model_validate(job.kwargs["payload"]).batch_key()
    except (KeyError, TypeError, ValidationError):
        return None


def take_companions(queue: Queue, lead: Job, limit: int) -> list[Job]:
    """Up to ``limit`` queued edits that can share ``lead``'s batch, removed from the queue."""
    key = batch_key(lead) if limit > 0 else None
    if key is None:
        return []
    take = queue.connection.register_script(_TAKE)
    taken: list[Job] = []
    for job_id in queue.get_job_ids(0, limit * SCAN_DEPTH):
        job = fetch_edit(queue.connection, job_id)
        if job is None or batch_key(job) != key:
            continue
        if take(keys=[queue.key, queue.intermediate_queue_key], args=[job_id]):
            taken.append(job)
            if len(taken) == limit:
                break
    if taken:
        logger.info("edit %s runs in a batch with %d more", lead.id, len(taken))
    return taken
