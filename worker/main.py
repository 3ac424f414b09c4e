"""The GPU worker: an RQ ``SimpleWorker`` that loads the models once and keeps them resident.

RQ's default worker forks a work-horse per job, so models loaded in a job would die with it
(and a parent that touched CUDA cannot fork); the simple worker runs jobs in-process instead.
It takes each dequeued edit together with compatible queued ones (``worker.batching``) and
runs them as one batched optimisation (``worker.jobs.run_edits``). Beside the job loop, daemon
threads keep the service healthy: one announces the worker and recovers edits of dead workers,
one removes expired files, one delivers webhooks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

from app import webhooks
from app.queue import WORKER_KEY_PREFIX, connect, edit_queue
from app.settings import Settings
from worker import runtime
from worker.batching import take_companions
from worker.jobs import EditRun, EditTimeout, run_edits
from worker.watchdog import remove_expired_files, requeue_abandoned

logger = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 3.0
HEARTBEAT_TTL_S = 10  # the worker's status key vanishes this long after the process dies
CLEANUP_INTERVAL_S = 600.0  # how often expired edits' files are looked for
WEBHOOK_POLL_S = 0.5
GPU_MAX_BATCH = 8  # edits batched on a GPU unless SOUNDEDIT_MAX_BATCH says otherwise


class EditWorker(SimpleWorker):
    """Loads the profile's models in ``__init__``, runs edits in batches of up to ``max_batch``
    and reports itself in Redis while it lives."""

    def __init__(self, *args: Any, settings: Settings, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", JSONSerializer)
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.engine = runtime.engine()
        on_gpu = self.engine.device.type == "cuda"
        self.max_batch = settings.max_batch or (GPU_MAX_BATCH if on_gpu else 1)
        self.jobs_done = 0
        self.jobs_failed = 0
        self._stopping = threading.Event()
        self._status_key = WORKER_KEY_PREFIX + self.name

    def status(self) -> dict[str, str]:
        return {
            "name": self.name,
            "pid": str(os.getpid()),
            "profile": self.engine.profile.name,
            "queues": ",".join(queue.name for queue in self.queues),
            "device": str(self.engine.device),
            "model_loads": str(runtime.model_loads),
            "max_batch": str(self.max_batch),
            "jobs_done": str(self.jobs_done),
            "jobs_failed": str(self.jobs_failed),
            "current_edits": ",".join(e.job_id for e in list(self.executions.values())),
            "updated_at": datetime.now(UTC).isoformat(),
        }

    def _every(self, interval_s: float, task: Callable[[], object], name: str) -> threading.Thread:
        """Run ``task`` every ``interval_s`` until the worker stops; a failing run is logged."""

        def loop() -> None:
            while not self._stopping.is_set():
                try:
                    task()
                except Exception as exc:  # a Redis blip must not kill the worker
                    logger.warning("%s failed: %s", name, exc)
                self._stopping.wait(interval_s)

        thread = threading.Thread(target=loop, name=name, daemon=True)
        thread.start()
        return thread

    def _beat(self) -> None:
        with self.connection.pipeline() as pipe:
            pipe.hset(self._status_key, mapping=self.status())  # type: ignore[arg-type]  # redis-py's key union
            pipe.expire(self._status_key, HEARTBEAT_TTL_S)
            pipe.execute()
        for queue in self.queues:
            requeue_abandoned(self.connection, queue, self.settings.max_attempts)

    def _clean(self) -> None:
        removed = remove_expired_files(self.connection, runtime.storage())
        if removed:
            logger.info("removed the files of %d expired edits", removed)

    def _deliver(self) -> None:
        secret = self.settings.webhook_secret
        if secret is not None:
            webhooks.deliver_due(self.connection, secret.get_secret_value())

    def work(self, *args: Any, **kwargs: Any) -> bool:
        threads = [
            self._every(HEARTBEAT_INTERVAL_S, self._beat, "soundedit-heartbeat"),
            self._every(CLEANUP_INTERVAL_S, self._clean, "soundedit-cleanup"),
            self._every(WEBHOOK_POLL_S, self._deliver, "soundedit-webhooks"),
        ]
        try:
            return super().work(*args, **kwargs)
        finally:
            self._stopping.set()
            for thread in threads:
                thread.join(timeout=HEARTBEAT_INTERVAL_S)
            self.connection.delete(self._status_key)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` with up to ``max_batch - 1`` compatible queued edits, as one batch.

        Each edit goes through RQ's own bookkeeping (started, then finished or failed, with its
        result); the batch runs under the longest time limit of its edits.
        """
        batch = [job, *take_companions(queue, job, self.max_batch - 1)]
        runs = [EditRun(member) for member in batch]
        executions = [self.prepare_execution(member) for member in batch]
        try:
            for member in batch:
                self.prepare_job_execution(member, remove_from_intermediate_queue=True)
                member.started_at = now()
            limit = max(member.timeout or Queue.DEFAULT_TIMEOUT for member in batch)
            with self.death_penalty_class(limit, EditTimeout, job_id=job.id):
                run_edits(runs)
        except (Exception, EditTimeout) as exc:  # the time limit, or Redis failing us
            for run in runs:
                if run.outcome is None:  # edits that ended already keep their outcome
                    try:
                        run.fail(exc)
                    except Exception as also:  # RQ's bookkeeping below still marks it failed
                        logger.warning("could not record the failure of %s: %s", run.job.id, also)
                        run.outcome = exc
        for run, execution in zip(runs, executions, strict=True):
            self._finalize(run, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    def _finalize(self, run: EditRun, queue: Queue, execution: Execution) -> None:
        """RQ's end of one edit: its result, or its failure. A Redis error here is logged, so
        that the other edits of the batch are still finalised and the worker goes on."""
        outcome = run.outcome if run.outcome is not None else RuntimeError("the edit never ended")
        try:
            if isinstance(outcome, BaseException):
                info = (type(outcome), outcome, outcome.__traceback__)
                self._finalize_failure(run.job, queue, execution, info)
            else:
                self._finalize_success(run.job, queue, execution, outcome)
        except Exception:
            logger.exception("could not record the end of edit %s", run.job.id)

    def handle_job_success(self, *args: Any, **kwargs: Any) -> None:
        self.jobs_done += 1
        super().handle_job_success(*args, **kwargs)

    def handle_job_failure(self, *args: Any, **kwargs: Any) -> None:
        self.jobs_failed += 1
        super().handle_job_failure(*args, **kwargs)


def run_worker(settings: Settings, *, burst: bool = False) -> bool:
    """Serve the queue of the profile this machine can run until stopped (or empty, if burst).

    SIGTERM (or Ctrl-C) lets the current edit finish, then exits; a second one stops at once.
    """
    redis = connect(settings)
    profile = runtime.profile()
    queue: Queue = edit_queue(redis, settings, profile.name)
    started = time.monotonic()
    worker = EditWorker([queue], connection=redis, settings=settings)
    logger.info(
        "worker %s serves %s with profile %r on %s, batches of up to %d (models loaded in %.1f s)",
        worker.name, queue.name, profile.name, worker.engine.device, worker.max_batch,
        time.monotonic() - started,
    )  # fmt: skip
    if profile.smoke:
        logger.warning("the smoke profile runs random weights: edits carry no meaning")
    return worker.work(burst=burst, with_scheduler=False)
