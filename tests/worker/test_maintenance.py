"""The worker's housekeeping against a real Redis: expired files, orphaned edits, failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from redis import Redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from app.storage import LocalStorage, edit_key
from worker.jobs import EditInputError, _classify
from worker.watchdog import ORPHAN_FILE_AGE_S, remove_expired_files, requeue_abandoned


def test_files_of_expired_edits_are_removed(redis_url: str, tmp_path: Path) -> None:
    redis = Redis.from_url(redis_url)
    storage = LocalStorage(tmp_path)
    expired, live, fresh = "a" * 32, "b" * 32, "c" * 32
    for edit_id in (expired, live, fresh):
        storage.put(edit_key(edit_id, "result.png"), b"png")
    redis.hset(f"rq:job:{live}", "status", "finished")  # a job record RQ still keeps
    old = time.time() - ORPHAN_FILE_AGE_S - 60
    for edit_id in (expired, live):
        os.utime(storage.path(f"edits/{edit_id}"), (old, old))

    assert remove_expired_files(redis, storage) == 1
    assert not storage.exists(edit_key(expired, "result.png"))
    assert storage.exists(edit_key(live, "result.png"))
    assert storage.exists(edit_key(fresh, "result.png"))  # too recent: its job may be enqueuing
    redis.delete(f"rq:job:{live}")


def test_failures_are_classified_for_the_client() -> None:
    # CUDA cannot run here; the error type is what the worker sees when a GPU runs out of memory.
    kind, status, detail = _classify(torch.OutOfMemoryError("CUDA out of memory"))
    assert (kind, status) == ("out-of-memory", 507) and "memory" in detail
    assert _classify(EditInputError("no face found"))[:2] == ("invalid-edit-input", 422)
    assert _classify(RuntimeError("boom"))[:2] == ("edit-failed", 500)


def test_orphans_of_a_dead_worker_are_requeued_in_order_or_given_up(redis_url: str) -> None:
    """Three edits a vanished worker was running: two go back to the queue's front, in their
    order; the third has used up its attempts and fails with a problem object."""
    redis = Redis.from_url(redis_url)
    queue = Queue("orphans", connection=redis, serializer=JSONSerializer)
    queue.enqueue_call("worker.jobs.run_edit", kwargs={"payload": {}}, job_id="waiting")
    orphans = []
    for name, attempts in (("first", 1), ("second", 1), ("spent", 3)):
        job = queue.enqueue_call(
            "worker.jobs.run_edit", kwargs={"payload": {}}, job_id=name, meta={"attempts": attempts}
        )
        queue.remove(job)
        job.worker_name = "gone"  # no soundedit:worker:gone key: its worker is dead
        job.set_status(JobStatus.STARTED)
        job.save()
        with redis.pipeline() as pipe:
            Execution.create(job, ttl=3600, pipeline=pipe, worker_name="gone")
            pipe.execute()
        orphans.append(name)

    recovered = requeue_abandoned(redis, queue, max_attempts=3)
    assert sorted(recovered) == sorted(orphans)
    assert queue.get_job_ids() == ["first", "second", "waiting"]
    assert StartedJobRegistry(queue=queue).get_job_ids() == []
    first = Job.fetch("first", connection=redis, serializer=JSONSerializer)
    assert first.get_status() == JobStatus.QUEUED and first.meta["phase"] == "queued"
    spent = Job.fetch("spent", connection=redis, serializer=JSONSerializer)
    assert spent.get_status() == JobStatus.FAILED
    assert spent.meta["error"]["type"].endswith("/worker-lost")
    assert "spent" in FailedJobRegistry(queue=queue).get_job_ids()
    assert requeue_abandoned(redis, queue, max_attempts=3) == []  # nothing left to recover
    queue.empty()
