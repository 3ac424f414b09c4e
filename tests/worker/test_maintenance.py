"""The worker's housekeeping against a real Redis: expired files, failure classification."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from redis import Redis

from app.storage import LocalStorage, edit_key
from worker.jobs import EditInputError, _classify
from worker.watchdog import ORPHAN_FILE_AGE_S, remove_expired_files


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
