"""``/edits``: submit a sound-guided edit, follow it, cancel it, download what it made."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from fastapi import APIRouter, File, Form, Header, Path, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError
from rq.exceptions import InvalidJobOperation
from rq.job import Job

from app import admission, jobs, webhooks
from app.deps import ClientDep, ProfileDep, RedisDep, SettingsDep, StorageDep
from app.events import edit_events
from app.jobs import EditJob, EditParameters, ImageSource, LatentSource, SeedSource
from app.problems import Problem, problem_responses
from app.queue import (
    FINAL_STATUSES,
    edit_queue,
    edit_status,
    enqueue_edit,
    fetch_edit,
    isoformat,
    request_cancel,
)
from app.schemas import EditCreated, EditLinks, EditPublic, ProfileInfo, Progress
from app.settings import Settings
from app.storage import edit_key, npy_bytes
from app.uploads import check_audio, check_image, check_latent, read_upload
from models.profiles import PROFILES, W_DIM, Profile

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/edits", tags=["edits"])

EditId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The edit's id.")]
MAX_URL_CHARS = 2000


class EditFile(StrEnum):
    """Files an edit leaves behind: the outputs once it succeeds, the preview while it runs."""

    result = jobs.RESULT_FILE
    source = jobs.SOURCE_FILE
    latent = jobs.LATENT_FILE
    report = jobs.REPORT_FILE
    preview = jobs.PREVIEW_FILE
    aligned = jobs.ALIGNED_FILE
    reconstruction = jobs.RECONSTRUCTION_FILE


MEDIA_TYPES = {
    EditFile.result: "image/png",
    EditFile.source: "image/png",
    EditFile.latent: "application/octet-stream",
    EditFile.report: "application/json",
    EditFile.preview: "image/png",
    EditFile.aligned: "image/png",
    EditFile.reconstruction: "image/png",
}


def _links(edit_id: str, state: str, meta: dict[str, Any]) -> EditLinks:
    base = f"/edits/{edit_id}"
    # The query names the preview's step, so the link changes whenever the image does.
    preview_step = meta.get("preview_step")
    preview = f"{base}/{EditFile.preview}?step={preview_step}" if preview_step else None
    links = EditLinks(self=base, events=f"{base}/events", preview=preview)
    if state == "succeeded":
        links.result = f"{base}/{EditFile.result}"
        links.source = f"{base}/{EditFile.source}"
        links.latent = f"{base}/{EditFile.latent}"
        links.report = f"{base}/{EditFile.report}"
        if meta.get("source", {}).get("kind") == "image":
            links.aligned = f"{base}/{EditFile.aligned}"
            links.reconstruction = f"{base}/{EditFile.reconstruction}"
    return links


def _profile_info(profile: Profile) -> ProfileInfo:
    note = (
        "random weights: this result proves the pipeline, not the method" if profile.smoke else None
    )
    return ProfileInfo(
        name=profile.name,
        resolution=profile.resolution,
        n_latent=profile.n_latent,
        smoke=profile.smoke,
        note=note,
    )


def _parameters(profile: Profile, settings: Settings, **given: Any) -> EditParameters:
    """The client's values over the server's and the profile's defaults, within the server's bounds."""
    for name in ("steps", "inversion_steps"):
        if given[name] is not None and given[name] > settings.max_steps:
            raise Problem(
                422,
                "out-of-range",
                f"{name} must be between 1 and {settings.max_steps}",
                field=name,
            )
    defaults = profile.defaults
    default_steps = min(settings.default_steps or defaults.steps, settings.max_steps)

    def pick(name: str, default: Any) -> Any:
        return default if given[name] is None else given[name]

    return EditParameters(
        steps=pick("steps", default_steps),
        lr=pick("lr", defaults.lr),
        lambda_l2=pick("lambda_l2", defaults.lambda_l2),
        lambda_id=pick("lambda_id", defaults.lambda_id),
        truncation=pick("truncation", defaults.truncation),
        random_seed=pick("random_seed", 0),
        text_mode=given["text_mode"],
        inversion_steps=pick("inversion_steps", min(defaults.inversion_steps, settings.max_steps)),
    )


def _webhook(url: str | None, events: str | None, settings: Settings) -> dict[str, Any] | None:
    if url is None:
        if events is not None:
            raise Problem(
                422,
                "webhook-url-required",
                "webhook_events needs a webhook_url",
                field="webhook_url",
            )
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise Problem(
            422,
            "invalid-webhook-url",
            "webhook_url must be an http or https URL",
            field="webhook_url",
        )
    if settings.webhook_secret is None:
        raise Problem(
            422, "webhooks-disabled",
            "this server has no webhook secret configured (SOUNDEDIT_WEBHOOK_SECRET), so it sends no webhooks",
            field="webhook_url",
        )  # fmt: skip
    try:
        return {"url": url, "events": list(webhooks.parse_events(events))}
    except ValueError as exc:
        raise Problem(422, "invalid-webhook-events", str(exc), field="webhook_events") from exc


def _owned_edit(redis: Any, edit_id: str, client: str) -> Job:
    """The edit, if it exists and belongs to the caller (others' edits are 404 too)."""
    job = fetch_edit(redis, edit_id)
    if job is None or job.meta.get("owner", client) != client:
        raise Problem(404, "edit-not-found", f"no edit with id {edit_id}")
    return job


def describe(job: Job, settings: Settings, redis: Any) -> EditPublic:
    """The public view of one edit from its RQ job and the metadata the worker keeps current."""
    meta = job.meta
    payload = EditJob.model_validate(job.kwargs["payload"])
    state = edit_status(job)
    position = None
    if state == "queued":
        position = edit_queue(redis, settings, payload.profile).get_job_position(job.id)
    step = int(meta.get("step", 0))
    steps = int(meta.get("steps", payload.params.steps))
    elapsed = eta = None
    if job.started_at is not None:
        end = job.ended_at if state in FINAL_STATUSES and job.ended_at else datetime.now(UTC)
        elapsed = max(0.0, (end - job.started_at.replace(tzinfo=UTC)).total_seconds())
        if state == "running" and 0 < step < steps:
            eta = elapsed * (steps - step) / step
    return EditPublic(
        id=job.id,
        status=state,  # type: ignore[arg-type]
        progress=Progress(
            phase=meta.get("phase", jobs.Phase.queued),
            step=step,
            steps=steps,
            phases=meta.get("phases", {}),
            elapsed_s=elapsed,
            eta_s=eta,
        ),
        queue_position=position,
        attempts=int(meta.get("attempts", 0)),
        created_at=isoformat(job.created_at),
        started_at=isoformat(job.started_at),
        finished_at=isoformat(job.ended_at) if state in FINAL_STATUSES else None,
        profile=_profile_info(PROFILES[payload.profile]),
        source=meta.get("source", {"kind": payload.source.kind}),
        text=payload.text,
        parameters=payload.params,
        metrics=meta.get("metrics"),
        error=meta.get("error") or _failure(state),
        links=_links(job.id, state, meta),
    )


def _failure(state: str) -> dict[str, Any] | None:
    """A problem object for an edit that died without reporting one (killed, timed out)."""
    if state != "failed":
        return None
    return {
        "type": "https://soundedit.dev/problems/edit-failed",
        "title": "Edit failed",
        "status": 500,
        "detail": "the worker stopped before finishing this edit",
    }


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EditCreated,
    responses=problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
    summary="Submit an edit",
)
async def create_edit(
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    profile: ProfileDep,
    client: ClientDep,
    audio: Annotated[UploadFile, File(description="The guiding sound: WAV, FLAC, OGG or MP3.")],
    seed: Annotated[
        int | None,
        Form(
            ge=0, le=jobs.MAX_SEED, description="Source: generate the start image from this seed."
        ),
    ] = None,
    latent: Annotated[
        UploadFile | None,
        File(
            description="Source: a W+ latent, .npy float of shape [n_latent, 512] or [1, n_latent, 512]."
        ),
    ] = None,
    image: Annotated[
        UploadFile | None,
        File(
            description="Source: a photo (PNG, JPEG, WebP, BMP, GIF): faces are aligned, other scenes centre-cropped, then inverted into W+."
        ),
    ] = None,
    face_index: Annotated[
        int,
        Form(
            ge=0,
            le=jobs.MAX_FACE_INDEX,
            description="With `image`: which face to edit, 0 = the largest.",
        ),
    ] = 0,
    inversion_steps: Annotated[
        int | None,
        Form(ge=1, description="With `image`: steps projecting it into W+ (profile default)."),
    ] = None,
    text: Annotated[
        str | None,
        Form(min_length=1, max_length=jobs.MAX_TEXT_CHARS, description="Optional text guidance."),
    ] = None,
    text_mode: Annotated[
        Literal["mix", "sum"],
        Form(
            description="mix: W+ layers 1–9 from sound, the rest from text; sum: one summed loss."
        ),
    ] = "mix",
    steps: Annotated[
        int | None,
        Form(ge=1, description="Optimisation steps (profile default; ≤ the server's max)."),
    ] = None,
    lr: Annotated[float | None, Form(gt=0, le=1, description="Adam learning rate.")] = None,
    lambda_l2: Annotated[
        float | None, Form(ge=0, le=10, description="λ_L2 latent distance.")
    ] = None,
    lambda_id: Annotated[float | None, Form(ge=0, le=10, description="λ_ID identity loss.")] = None,
    truncation: Annotated[
        float | None, Form(gt=0, le=1, description="Truncation ψ of a seed source.")
    ] = None,
    random_seed: Annotated[
        int | None, Form(ge=0, le=jobs.MAX_SEED, description="Seed for any randomness.")
    ] = None,
    webhook_url: Annotated[
        str | None,
        Form(
            max_length=MAX_URL_CHARS,
            description="POST signed JSON events here (needs a server secret).",
        ),
    ] = None,
    webhook_events: Annotated[
        str | None,
        Form(
            max_length=200,
            description=f"Comma-separated subset of {', '.join(webhooks.EVENTS)} (default: the final ones).",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key", description="Retrying with the same key returns the same edit."
        ),
    ] = None,
) -> EditCreated:
    """Queue an edit of one source (exactly one of `seed`, `latent`, `image`) guided by `audio`."""
    given = [n for n, v in (("seed", seed), ("latent", latent), ("image", image)) if v is not None]
    if len(given) != 1:
        detail = "give exactly one source: seed, latent or image" + (
            f" (got {', '.join(given)})" if given else ""
        )
        raise Problem(422, "source-required", detail, field="source")
    fields = {
        "steps": steps, "lr": lr, "lambda_l2": lambda_l2, "lambda_id": lambda_id,
        "truncation": truncation, "random_seed": random_seed, "text_mode": text_mode,
        "inversion_steps": inversion_steps,
    }  # fmt: skip
    params = _parameters(profile, settings, **fields)
    webhook = _webhook(webhook_url, webhook_events, settings)
    audio_bytes = await read_upload(audio, "audio", settings.max_upload_bytes)
    check_audio(audio_bytes, "audio", settings.max_audio_seconds)
    uploads = {"audio": audio_bytes}
    latent_array = None
    if latent is not None:
        uploads["latent"] = await read_upload(latent, "latent", settings.max_upload_bytes)
        latent_array = check_latent(uploads["latent"], "latent", profile.n_latent, W_DIM)
    if image is not None:
        uploads["image"] = await read_upload(image, "image", settings.max_upload_bytes)
        check_image(uploads["image"], "image", settings.max_image_pixels)

    edit_id = uuid.uuid4().hex
    try:
        if idempotency_key is not None:
            request_digest = admission.fingerprint(
                {**fields, "seed": seed, "text": text, "webhook": webhook, "profile": profile.name},
                uploads,
            )
            earlier = admission.claim_idempotency_key(
                redis, client, idempotency_key, edit_id, request_digest, settings.result_ttl_s
            )
            if earlier is not None:
                response.headers["Location"] = f"/edits/{earlier}"
                response.headers["Idempotent-Replayed"] = "true"
                job = fetch_edit(redis, earlier)
                state = edit_status(job) if job is not None else "queued"
                links = EditLinks(self=f"/edits/{earlier}", events=f"/edits/{earlier}/events")
                return EditCreated(id=earlier, status=state, links=links)  # type: ignore[arg-type]
        queue = edit_queue(redis, settings, profile.name)
        admission.check_queue_room(queue.count, settings)
        admission.check_client_room(redis, client, settings)
    except RedisError as exc:
        raise _queue_unavailable(exc) from exc
    except Problem:
        if idempotency_key is not None:
            admission.release_idempotency_key(redis, client, idempotency_key)
        raise

    source: SeedSource | LatentSource | ImageSource
    if latent_array is not None:
        source = LatentSource(key=edit_key(edit_id, jobs.LATENT_IN_FILE))
        storage.put(source.key, npy_bytes(latent_array))
    elif image is not None:
        source = ImageSource(key=edit_key(edit_id, jobs.IMAGE_FILE), face_index=face_index)
        storage.put(source.key, uploads["image"])
    else:
        assert seed is not None
        source = SeedSource(seed=seed)
    audio_key = edit_key(edit_id, jobs.AUDIO_FILE)
    storage.put(audio_key, audio_bytes)

    job_payload = EditJob(
        edit_id=edit_id,
        profile=profile.name,
        audio_key=audio_key,
        source=source,
        text=text,
        params=params,
    )
    meta = {
        "phase": jobs.Phase.queued,
        "step": 0,
        "steps": params.steps,
        "attempts": 0,
        "owner": client,
        "webhook": webhook,
        "source": source.model_dump(exclude={"key"}),
        "audio_filename": audio.filename,
    }
    try:
        enqueue_edit(redis, settings, job_payload, meta)
        admission.track_active(redis, client, edit_id)
    except RedisError as exc:
        storage.delete_prefix(edit_key(edit_id, ""))
        if idempotency_key is not None:
            admission.release_idempotency_key(redis, client, idempotency_key)
        raise _queue_unavailable(exc) from exc

    response.headers["Location"] = f"/edits/{edit_id}"
    return EditCreated(
        id=edit_id,
        status="queued",
        links=EditLinks(self=f"/edits/{edit_id}", events=f"/edits/{edit_id}/events"),
    )


def _queue_unavailable(exc: Exception) -> Problem:
    logger.error("the queue is unreachable: %s", exc)
    return Problem(
        503,
        "queue-unavailable",
        "the job queue is unreachable; try again later",
        headers={"Retry-After": "5"},
    )


@router.get(
    "/{edit_id}",
    response_model=EditPublic,
    responses=problem_responses(401, 404, 422),
    summary="Follow an edit",
)
def get_edit(
    edit_id: EditId, settings: SettingsDep, redis: RedisDep, client: ClientDep
) -> EditPublic:
    return describe(_owned_edit(redis, edit_id, client), settings, redis)


@router.delete(
    "/{edit_id}",
    response_model=EditPublic,
    responses={
        202: {"model": EditPublic, "description": "Running: it stops within a few steps."},
        **problem_responses(401, 404, 409, 422),
    },
    summary="Cancel an edit",
)
def cancel_edit(
    edit_id: EditId, response: Response, settings: SettingsDep, redis: RedisDep, client: ClientDep
) -> EditPublic:
    """A queued edit is canceled at once (200); a running one stops at its next step (202)."""
    job = _owned_edit(redis, edit_id, client)
    state = edit_status(job)
    if state in FINAL_STATUSES:
        raise Problem(
            409, "edit-finished", f"the edit already ended: it is {state}", edit_status=state
        )
    request_cancel(redis, edit_id, settings.job_timeout_s)  # a worker about to start it sees this
    if state == "queued":
        try:
            job.cancel()
            job.meta.update(canceled=True, phase=jobs.Phase.done)
            job.save_meta()
            webhooks.notify(redis, job.meta, "canceled", {"id": edit_id, "status": "canceled"})
        except InvalidJobOperation:
            pass  # a worker took it meanwhile: the flag stops it
    job = _owned_edit(redis, edit_id, client)
    described = describe(job, settings, redis)
    response.status_code = 200 if described.status == "canceled" else 202
    return described


@router.get(
    "/{edit_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **problem_responses(401, 404, 422),
    },
    summary="Follow an edit as Server-Sent Events",
)
def stream_edit_events(
    edit_id: EditId, settings: SettingsDep, redis: RedisDep, client: ClientDep
) -> StreamingResponse:
    """Events `status`, `progress`, `preview` and `done`; the stream ends when the edit ends."""
    _owned_edit(redis, edit_id, client)

    def load() -> EditPublic | None:
        job = fetch_edit(redis, edit_id)
        return describe(job, settings, redis) if job is not None else None

    return StreamingResponse(
        edit_events(load),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{edit_id}/{filename}",
    responses={
        200: {"content": {"image/png": {}, "application/octet-stream": {}, "application/json": {}}},
        **problem_responses(401, 404, 409, 422),
    },
    summary="Download a file of an edit",
)
def get_edit_file(
    edit_id: EditId, filename: EditFile, redis: RedisDep, storage: StorageDep, client: ClientDep
) -> Response:
    """The outputs once the edit succeeded; `preview.png` (the latest intermediate image) any time after its first preview."""
    job = _owned_edit(redis, edit_id, client)
    state = edit_status(job)
    key = edit_key(edit_id, filename.value)
    ready = filename is EditFile.preview or state == "succeeded"
    if not ready or not storage.exists(key):
        raise Problem(
            409,
            "not-ready",
            f"{filename.value} is not available: the edit is {state}",
            edit_status=state,
        )
    headers = {
        "Content-Disposition": f'inline; filename="{edit_id}-{filename.value}"',
        "Cache-Control": "no-cache",
    }
    return Response(storage.get(key), media_type=MEDIA_TYPES[filename], headers=headers)
