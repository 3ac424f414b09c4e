"""The job function the API enqueues by dotted path (``app.jobs.JOB_FUNCTION``)."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import numpy as np
from PIL import Image
from rq import get_current_job

from app import jobs
from app.jobs import EditJob, LatentSource, Phase
from app.problems import problem_body
from app.storage import edit_key, npy_bytes
from worker import runtime

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most this often a progress write to Redis


class EditInputError(ValueError):
    """The inputs passed the API's checks but the models cannot use them."""


def run_edit(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one edit end to end; returns the quality report (also stored as ``report.json``)."""
    job = get_current_job()
    meta: dict[str, Any] = job.meta if job is not None else {}
    last_write = 0.0

    def report(phase: Phase, step: int | None = None, force: bool = False) -> None:
        nonlocal last_write
        meta["phase"] = phase
        if step is not None:
            meta["step"] = step
        now = time.monotonic()
        if job is not None and (force or now - last_write >= PROGRESS_INTERVAL_S):
            job.save_meta()
            last_write = now

    try:
        request = EditJob.model_validate(payload)
        report(Phase.loading, force=True)
        engine = runtime.engine()
        if request.profile != engine.profile.name:
            raise EditInputError(
                f"edit needs profile {request.profile!r}; this worker runs {engine.profile.name!r}"
            )
        store = runtime.storage()
        audio = store.get(request.audio_key)
        latent = None
        if isinstance(request.source, LatentSource):
            latent = np.load(io.BytesIO(store.get(request.source.key)), allow_pickle=False)
        seed = None if latent is not None else request.source.seed  # type: ignore[union-attr]
        params = request.params

        def on_step(step: int, steps: int) -> None:
            meta["steps"] = steps
            report(Phase.editing, step, force=step == steps)

        try:
            output = engine.edit(
                audio,
                seed=seed,
                latent=latent,
                text=request.text,
                steps=params.steps,
                lr=params.lr,
                lambda_l2=params.lambda_l2,
                lambda_id=params.lambda_id,
                truncation=params.truncation,
                random_seed=params.random_seed,
                text_mode=params.text_mode,
                on_step=on_step,
            )
        except ValueError as exc:  # undecodable audio, wrong latent shape, ...
            raise EditInputError(str(exc)) from exc

        report(Phase.saving, force=True)
        store.put(edit_key(request.edit_id, jobs.RESULT_FILE), png_bytes(output.result))
        store.put(edit_key(request.edit_id, jobs.SOURCE_FILE), png_bytes(output.source))
        store.put(edit_key(request.edit_id, jobs.LATENT_FILE), npy_bytes(output.latent))
        store.put(
            edit_key(request.edit_id, jobs.REPORT_FILE),
            json.dumps(output.report, indent=2).encode(),
        )
        meta["metrics"] = output.report
        report(Phase.done, force=True)
        return output.report
    except EditInputError as exc:
        meta["error"] = problem_body(422, "invalid-edit-input", str(exc), title="Edit failed")
        report(Phase.done, force=True)
        raise
    except Exception as exc:
        logger.exception("edit failed")
        meta["error"] = problem_body(
            500, "edit-failed", f"{type(exc).__name__}: {exc}", title="Edit failed"
        )
        report(Phase.done, force=True)
        raise


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
