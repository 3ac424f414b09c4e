"""The GPU worker: an RQ ``SimpleWorker`` that loads the models once and keeps them resident.

RQ's default worker forks a work-horse per job, so models loaded in a job would die with it
(and a parent that touched CUDA cannot fork); the simple worker runs jobs in-process instead.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime
from typing import Any

from rq import SimpleWorker
from rq.serializers import JSONSerializer

from app.queue import WORKER_KEY_PREFIX, connect, edit_queue
from app.settings import Settings
from worker import runtime

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 5.0
HEARTBEAT_TTL_S = 15  # the worker's status key vanishes this long after the process dies


class EditWorker(SimpleWorker):
    """Loads the profile's models in ``__init__`` and reports itself in Redis while it lives."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.engine = runtime.engine()
        self.jobs_done = 0
        self.jobs_failed = 0
        self._stop_beating = threading.Event()
        self._status_key = WORKER_KEY_PREFIX + self.name

    def status(self) -> dict[str, str]:
        job_id = self.get_current_job_id()
        return {
            "name": self.name,
            "pid": str(os.getpid()),
            "profile": self.engine.profile.name,
            "device": str(self.engine.device),
            "model_loads": str(runtime.model_loads),
            "jobs_done": str(self.jobs_done),
            "jobs_failed": str(self.jobs_failed),
            "current_edit": job_id or "",
            "updated_at": datetime.now(UTC).isoformat(),
        }

    def _beat(self) -> None:
        while not self._stop_beating.is_set():
            try:
                with self.connection.pipeline() as pipe:
                    pipe.hset(self._status_key, mapping=self.status())  # type: ignore[arg-type]  # redis-py's key union
                    pipe.expire(self._status_key, HEARTBEAT_TTL_S)
                    pipe.execute()
            except Exception as exc:  # Redis blips must not kill the worker
                logger.warning("heartbeat failed: %s", exc)
            self._stop_beating.wait(HEARTBEAT_INTERVAL_S)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        beater = threading.Thread(target=self._beat, name="soundedit-heartbeat", daemon=True)
        beater.start()
        try:
            return super().work(*args, **kwargs)
        finally:
            self._stop_beating.set()
            beater.join(timeout=HEARTBEAT_INTERVAL_S)
            self.connection.delete(self._status_key)

    def handle_job_success(self, *args: Any, **kwargs: Any) -> None:
        self.jobs_done += 1
        super().handle_job_success(*args, **kwargs)

    def handle_job_failure(self, *args: Any, **kwargs: Any) -> None:
        self.jobs_failed += 1
        super().handle_job_failure(*args, **kwargs)


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Serve the queue of the profile this machine can run until stopped (or empty, if burst)."""
    redis = connect(settings)
    profile = runtime.profile()
    queue = edit_queue(redis, settings, profile.name)
    started = time.monotonic()
    worker = EditWorker([queue], connection=redis)
    logger.info(
        "worker %s serves %s with profile %r on %s (models loaded in %.1f s)",
        worker.name,
        queue.name,
        profile.name,
        worker.engine.device,
        time.monotonic() - started,
    )
    if profile.smoke:
        logger.warning("the smoke profile runs random weights: edits carry no meaning")
    return worker.work(burst=burst, with_scheduler=False)
