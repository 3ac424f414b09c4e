"""The job function the API enqueues by dotted path (``app.jobs.JOB_FUNCTION``)."""

from __future__ import annotations

import io
import json
import logging
import time
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
from models.images import load_image
from models.optimize import EditCanceled
from worker import runtime

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most this often a progress write to Redis


class EditInputError(ValueError):
    """The inputs passed the API's checks but the models cannot use them."""


class Progress:
    """Keeps the job's metadata current (throttled) and answers whether to stop."""

    def __init__(self, job: Job | None) -> None:
        self.job = job
        self.meta: dict[str, Any] = job.meta if job is not None else {}
        self.last_write = 0.0
        self.last_step_at = time.monotonic()

    def save(self, phase: Phase | None = None, force: bool = False, **fields: Any) -> None:
        if phase is not None:
            self.meta["phase"] = phase
        self.meta.update(fields)
        now = time.monotonic()
        if self.job is not None and (force or now - self.last_write >= PROGRESS_INTERVAL_S):
            self.job.save_meta()
            self.last_write = now

    def canceled(self) -> bool:
        return self.job is not None and cancel_requested(self.job.connection, self.job.id)

    def event(self, name: str, **payload: Any) -> None:
        if self.job is not None:
            webhooks.notify(self.job.connection, self.meta, name, {"id": self.job.id, **payload})


def run_edit(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one edit end to end; returns the quality report (also stored as ``report.json``)."""
    job = get_current_job()
    progress = Progress(job)
    redis = job.connection if job is not None else None
    started = time.monotonic()
    progress.save(Phase.loading, force=True, attempts=int(progress.meta.get("attempts", 0)) + 1)
    try:
        if progress.canceled():
            raise EditCanceled(0, "queued")
        progress.event("running", status="running")
        report = _edit(EditJob.model_validate(payload), progress)
        if redis is not None:
            metrics.observe(redis, "edit_seconds", time.monotonic() - started)
        progress.save(Phase.done, force=True, metrics=report)
        progress.event("succeeded", status="succeeded", metrics=report)
        return report
    except EditCanceled as exc:
        logger.info("edit canceled at step %d", exc.step)
        progress.save(Phase.done, force=True, canceled=True)
        progress.event("canceled", status="canceled")
        return {"canceled": True, "step": exc.step}
    except Exception as exc:
        kind, status, detail = _classify(exc)
        if status >= 500:
            logger.exception("edit failed")
        error = problem_body(status, kind, detail, title="Edit failed")
        progress.save(Phase.done, force=True, error=error)
        progress.event("failed", status="failed", error=error)
        if redis is not None:
            metrics.count_failure(redis, kind)
        raise


def _classify(exc: Exception) -> tuple[str, int, str]:
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
    if type(exc).__name__ == "JobTimeoutException":
        return "timeout", 504, f"the edit ran past the server's time limit: {exc}"
    return "edit-failed", 500, f"{type(exc).__name__}: {exc}"


def _edit(request: EditJob, progress: Progress) -> dict[str, Any]:
    engine = runtime.engine()
    if request.profile != engine.profile.name:
        raise EditInputError(
            f"edit needs profile {request.profile!r}; this worker runs {engine.profile.name!r}"
        )
    store = runtime.storage()
    audio = store.get(request.audio_key)
    source = request.source
    params = request.params
    redis = progress.job.connection if progress.job is not None else None
    phases: dict[str, dict[str, int]] = progress.meta.setdefault("phases", {})
    previews = 0

    def on_step(phase: str, step: int, steps: int, preview: np.ndarray | None) -> None:
        nonlocal previews
        now = time.monotonic()
        if redis is not None and step > 0:
            metrics.observe(redis, "step_seconds", now - progress.last_step_at)
        progress.last_step_at = now
        phases[phase] = {"step": step, "steps": steps}
        if preview is not None:
            previews += 1
            store.put(edit_key(request.edit_id, jobs.PREVIEW_FILE), png_bytes(preview))
            progress.meta["preview_step"] = previews  # counts up across phases
        boundary = step in (0, steps)
        progress.save(Phase(phase), force=boundary or preview is not None, step=step, steps=steps)

    try:
        latent = image = None
        if isinstance(source, LatentSource):
            latent = np.load(io.BytesIO(store.get(source.key)), allow_pickle=False)
        elif isinstance(source, ImageSource):
            image = load_image(store.get(source.key), runtime.settings().max_image_pixels)
        output = engine.edit(
            audio,
            seed=source.seed if isinstance(source, SeedSource) else None,
            latent=latent,
            image=image,
            face_index=source.face_index if isinstance(source, ImageSource) else 0,
            inversion_steps=params.inversion_steps,
            text=request.text,
            steps=params.steps,
            lr=params.lr,
            lambda_l2=params.lambda_l2,
            lambda_id=params.lambda_id,
            truncation=params.truncation,
            random_seed=params.random_seed,
            text_mode=params.text_mode,
            on_step=on_step,
            should_cancel=progress.canceled,
        )
    except ValueError as exc:  # undecodable audio or image, no face found, wrong latent shape
        raise EditInputError(str(exc)) from exc

    progress.save(Phase.saving, force=True)
    outputs = {
        jobs.RESULT_FILE: png_bytes(output.result),
        jobs.SOURCE_FILE: png_bytes(output.source),
        jobs.LATENT_FILE: npy_bytes(output.latent),
        jobs.REPORT_FILE: json.dumps(output.report, indent=2).encode(),
    }
    if output.photo is not None:
        outputs[jobs.ALIGNED_FILE] = png_bytes(output.photo.aligned)
        outputs[jobs.RECONSTRUCTION_FILE] = png_bytes(output.photo.reconstruction)
    for name, data in outputs.items():
        store.put(edit_key(request.edit_id, name), data)
    return output.report


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
