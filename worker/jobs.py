"""Running edits: alone (``run_edit``, the RQ job function) or as a batch (``run_edits``).

``EditWorker`` gathers queued edits that share optimiser settings and runs them through
``run_edits`` in one batched optimisation; each edit still keeps its own progress, previews,
cancellation, events, files and outcome.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from rq import get_current_job
from rq.job import Job

from app import jobs, metrics, webhooks
from app.jobs import EditJob, ImageSource, LatentSource, Phase, SeedSource
from app.problems import problem_body
from app.queue import cancel_requested
from app.storage import edit_key, npy_bytes
from models.engine import EditEngine, EditOptions, EditOutput, EditRequest
from models.images import load_image
from models.optimize import EditCanceled
from worker import runtime

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most this often a progress write to Redis

Outcome = dict[str, Any] | BaseException  # an edit's report, or what it failed with


class EditInputError(ValueError):
    """The inputs passed the API's checks but the models cannot use them."""


class EditTimeout(BaseException):
    """A batch ran past its time limit (``EditWorker``'s alarm raises it).

    Not an ``Exception``: no handler of a single edit may take it for that edit's own failure
    and go on; it ends the whole batch, whose unfinished edits then fail with a 504.
    """


def run_edit(payload: dict[str, Any]) -> dict[str, Any]:
    """One edit end to end; returns the quality report (also stored as ``report.json``).

    ``payload`` is the job's ``EditJob``; ``EditRun`` reads it from the current job.
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("run_edit runs inside an RQ job")
    run = EditRun(job)
    run_edits([run])
    if isinstance(run.outcome, BaseException):
        raise run.outcome
    assert run.outcome is not None
    return run.outcome


def run_edits(runs: Sequence[EditRun]) -> None:
    """Run edits, those sharing optimiser settings as one batch; each ``run.outcome`` is set.

    A canceled edit's outcome is a report ``{"canceled": true, ...}``; a failed one's is its
    exception, already recorded in the job's metadata as a problem object.
    """
    engine = runtime.engine()
    requests = {i: request for i, run in enumerate(runs) if (request := run.start(engine))}
    groups: dict[EditOptions, list[int]] = {}
    for i in requests:
        options = runs[i].options
        assert options is not None
        groups.setdefault(options, []).append(i)
    for options, members in groups.items():
        metrics.observe(runs[members[0]].redis, "batch_edits", len(members))
        try:
            outputs: list[EditOutput | Exception] = engine.edit_batch(
                [requests[i] for i in members], options
            )
        except Exception as exc:  # the group's own failure (out of memory for one edit)
            outputs = [exc] * len(members)
        for i, output in zip(members, outputs, strict=True):
            runs[i].finish(output)


class EditRun:
    """One edit of a batch: its inputs, its progress in the job's metadata, its outcome."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.redis = job.connection
        self.meta: dict[str, Any] = job.meta
        self.started = time.monotonic()
        self.last_write = 0.0
        self.last_step_at = self.started
        self.previews = 0
        self.outcome: Outcome | None = None  # set when the edit ends
        self.request: EditJob | None = None
        self.options: EditOptions | None = None  # set by start(); edits batch on equal options

    def save(self, phase: Phase | None = None, force: bool = False, **fields: Any) -> None:
        """Update the job's metadata; written to Redis at most every ``PROGRESS_INTERVAL_S``."""
        if phase is not None:
            self.meta["phase"] = phase
        self.meta.update(fields)
        now = time.monotonic()
        if force or now - self.last_write >= PROGRESS_INTERVAL_S:
            self.job.save_meta()
            self.last_write = now

    def canceled(self) -> bool:
        return cancel_requested(self.redis, self.job.id)

    def should_stop(self) -> bool:
        """Asked before every step. A cancel is reported at once: the rest of a batch goes on
        for a while, and this edit's client need not wait for it."""
        if not self.canceled():
            return False
        self._report_canceled()
        return True

    def _report_canceled(self) -> None:
        if not self.meta.get("canceled"):  # the API reports an edit canceled while queued
            self.meta = self.job.get_meta(refresh=True)
        if not self.meta.get("canceled"):
            logger.info("edit %s canceled at step %s", self.job.id, self.meta.get("step", 0))
            self.save(Phase.done, force=True, canceled=True)
            self.event("canceled", status="canceled")

    def event(self, name: str, **payload: Any) -> None:
        webhooks.notify(self.redis, self.meta, name, {"id": self.job.id, **payload})

    def start(self, engine: EditEngine) -> EditRequest | None:
        """The engine's request for this edit; None when it ended already (canceled, bad)."""
        self.save(Phase.loading, force=True, attempts=int(self.meta.get("attempts", 0)) + 1)
        try:
            if self.canceled():
                raise EditCanceled(0, "queued")
            self.event("running", status="running")
            self.request = request = EditJob.model_validate(self.job.kwargs["payload"])
            if request.profile != engine.profile.name:
                raise EditInputError(
                    f"edit needs profile {request.profile!r}; "
                    f"this worker runs {engine.profile.name!r}"
                )
            params = request.params
            self.options = EditOptions(
                steps=params.steps,
                lr=params.lr,
                lambda_l2=params.lambda_l2,
                lambda_id=params.lambda_id,
                text_mode=params.text_mode if request.text else "mix",  # unused without text
            )
            return self._engine_request(request)
        except Exception as exc:
            self.finish(exc)
            return None

    def _engine_request(self, request: EditJob) -> EditRequest:
        store = runtime.storage()
        source = request.source
        latent = image = None
        try:
            if isinstance(source, LatentSource):
                latent = np.load(io.BytesIO(store.get(source.key)), allow_pickle=False)
            elif isinstance(source, ImageSource):
                image = load_image(store.get(source.key), runtime.settings().max_image_pixels)
        except ValueError as exc:  # an unreadable latent or image
            raise EditInputError(str(exc)) from exc
        params = request.params
        return EditRequest(
            audio=store.get(request.audio_key),
            seed=source.seed if isinstance(source, SeedSource) else None,
            latent=latent,
            image=image,
            face_index=source.face_index if isinstance(source, ImageSource) else 0,
            inversion_steps=params.inversion_steps,
            text=request.text,
            truncation=params.truncation,
            random_seed=params.random_seed,
            on_step=self.on_step,
            should_cancel=self.should_stop,
        )

    def on_step(self, phase: str, step: int, steps: int, preview: np.ndarray | None) -> None:
        """Progress of a phase; previews are stored as ``preview.png``."""
        now = time.monotonic()
        if step > 0:
            metrics.observe(self.redis, "step_seconds", now - self.last_step_at)
        self.last_step_at = now
        phases: dict[str, dict[str, int]] = self.meta.setdefault("phases", {})
        phases[phase] = {"step": step, "steps": steps}
        if preview is not None and self.request is not None:
            self.previews += 1
            runtime.storage().put(
                edit_key(self.request.edit_id, jobs.PREVIEW_FILE), png_bytes(preview)
            )
            self.meta["preview_step"] = self.previews  # counts up across phases
        boundary = step in (0, steps)
        self.save(Phase(phase), force=boundary or preview is not None, step=step, steps=steps)

    def finish(self, output: EditOutput | Exception) -> None:
        """Store the edit's files and report, or record why it ended without them."""
        if isinstance(output, EditCanceled):
            self._report_canceled()
            self.outcome = {"canceled": True, "step": output.step}
            return
        try:
            if isinstance(output, Exception):
                raise output
            self._store(output)
        except Exception as exc:
            self.fail(exc)
            return
        metrics.observe(self.redis, "edit_seconds", time.monotonic() - self.started)
        self.save(Phase.done, force=True, metrics=output.report)
        self.event("succeeded", status="succeeded", metrics=output.report)
        self.outcome = output.report

    def fail(self, exc: BaseException) -> None:
        """Record ``exc`` as this edit's problem (a 422 for inputs the models cannot use)."""
        if isinstance(exc, ValueError) and not isinstance(exc, EditInputError):
            exc = EditInputError(str(exc))  # undecodable audio, no face found, a wrong shape
        self.outcome = exc
        kind, status, detail = _classify(exc)
        if status >= 500:
            logger.error("edit %s failed", self.job.id, exc_info=exc)
        error = problem_body(status, kind, detail, title="Edit failed")
        self.save(Phase.done, force=True, error=error)
        self.event("failed", status="failed", error=error)
        metrics.count_failure(self.redis, kind)

    def _store(self, output: EditOutput) -> None:
        assert self.request is not None
        self.save(Phase.saving, force=True)
        outputs = {
            jobs.RESULT_FILE: png_bytes(output.result),
            jobs.SOURCE_FILE: png_bytes(output.source),
            jobs.LATENT_FILE: npy_bytes(output.latent),
            jobs.REPORT_FILE: json.dumps(output.report, indent=2).encode(),
        }
        if output.photo is not None:
            outputs[jobs.ALIGNED_FILE] = png_bytes(output.photo.aligned)
            outputs[jobs.RECONSTRUCTION_FILE] = png_bytes(output.photo.reconstruction)
        store = runtime.storage()
        for name, data in outputs.items():
            store.put(edit_key(self.request.edit_id, name), data)


def _classify(exc: BaseException) -> tuple[str, int, str]:
    """(problem slug, status, detail) for what made an edit fail."""
    if isinstance(exc, EditInputError):
        return "invalid-edit-input", 422, str(exc)
    if isinstance(exc, torch.OutOfMemoryError):
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # leave the GPU usable for the next edit
        return (
            "out-of-memory",
            507,
            "the GPU ran out of memory for this edit; try fewer steps or a smaller profile",
        )
    if isinstance(exc, EditTimeout) or type(exc).__name__ == "JobTimeoutException":
        return "timeout", 504, f"the edit ran past the server's time limit: {exc}"
    return "edit-failed", 500, f"{type(exc).__name__}: {exc}"


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
