"""``/edits``: submit a sound-guided edit, follow it, download what it made."""

from __future__ import annotations

import logging
import uuid
from enum import StrEnum
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status
from redis.exceptions import RedisError

from app import jobs
from app.deps import ProfileDep, RedisDep, SettingsDep, StorageDep
from app.jobs import EditJob, EditParameters, LatentSource, SeedSource
from app.problems import PROBLEM_JSON, Problem
from app.queue import edit_queue, edit_status, enqueue_edit, fetch_edit, isoformat
from app.schemas import EditCreated, EditLinks, EditPublic, ProfileInfo, Progress
from app.settings import Settings
from app.storage import edit_key, npy_bytes
from app.uploads import check_audio, check_latent, read_upload
from models.profiles import PROFILES, W_DIM, Profile

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/edits", tags=["edits"])

EditId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The edit's id.")]

PROBLEM_RESPONSE = {"content": {PROBLEM_JSON: {"schema": {"type": "object"}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {**PROBLEM_RESPONSE, "description": text}
    for code, text in {
        404: "No such edit.",
        409: "The file is not ready: the edit has not succeeded.",
        413: "An upload or the whole request is too large.",
        415: "An upload is not a readable audio file or .npy array.",
        422: "A field is missing, malformed or out of range.",
        503: "The queue is unreachable.",
    }.items()
}


class EditFile(StrEnum):
    """Files an edit leaves behind once it succeeds."""

    result = jobs.RESULT_FILE
    source = jobs.SOURCE_FILE
    latent = jobs.LATENT_FILE
    report = jobs.REPORT_FILE


MEDIA_TYPES = {
    EditFile.result: "image/png",
    EditFile.source: "image/png",
    EditFile.latent: "application/octet-stream",
    EditFile.report: "application/json",
}


def _links(edit_id: str, succeeded: bool) -> EditLinks:
    base = f"/edits/{edit_id}"
    if not succeeded:
        return EditLinks(self=base)
    return EditLinks(
        self=base,
        result=f"{base}/{EditFile.result}",
        source=f"{base}/{EditFile.source}",
        latent=f"{base}/{EditFile.latent}",
    )


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
    steps = given["steps"]
    if steps is not None and steps > settings.max_steps:
        raise Problem(
            422,
            "out-of-range",
            f"steps must be between 1 and {settings.max_steps}",
            field="steps",
        )
    defaults = profile.defaults
    default_steps = min(settings.default_steps or defaults.steps, settings.max_steps)
    return EditParameters(
        steps=steps if steps is not None else default_steps,
        lr=given["lr"] if given["lr"] is not None else defaults.lr,
        lambda_l2=given["lambda_l2"] if given["lambda_l2"] is not None else defaults.lambda_l2,
        lambda_id=given["lambda_id"] if given["lambda_id"] is not None else defaults.lambda_id,
        truncation=(
            given["truncation"] if given["truncation"] is not None else defaults.truncation
        ),
        random_seed=given["random_seed"] if given["random_seed"] is not None else 0,
        text_mode=given["text_mode"],
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EditCreated,
    responses=ERRORS,
    summary="Submit an edit",
)
async def create_edit(
    response: Response,
    settings: SettingsDep,
    redis: RedisDep,
    storage: StorageDep,
    profile: ProfileDep,
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
        File(description="Source: a photo. Needs inversion, which no profile offers yet (415)."),
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
) -> EditCreated:
    """Queue an edit of one source (exactly one of `seed`, `latent`, `image`) guided by `audio`."""
    given = [
        name
        for name, value in (("seed", seed), ("latent", latent), ("image", image))
        if value is not None
    ]
    if len(given) != 1:
        detail = "give exactly one source: seed, latent or image" + (
            f" (got {', '.join(given)})" if given else ""
        )
        raise Problem(422, "source-required", detail, field="source")
    params = _parameters(
        profile,
        settings,
        steps=steps,
        lr=lr,
        lambda_l2=lambda_l2,
        lambda_id=lambda_id,
        truncation=truncation,
        random_seed=random_seed,
        text_mode=text_mode,
    )
    if image is not None:
        raise Problem(
            415,
            "image-source-unsupported",
            f"profile {profile.name!r} cannot edit uploaded photos yet (that needs inversion "
            "into the generator's latent space); send a seed or a W+ latent instead",
            field="image",
        )

    audio_bytes = await read_upload(audio, "audio", settings.max_upload_bytes)
    check_audio(audio_bytes, "audio", settings.max_audio_seconds)
    latent_array = None
    if latent is not None:
        latent_bytes = await read_upload(latent, "latent", settings.max_upload_bytes)
        latent_array = check_latent(latent_bytes, "latent", profile.n_latent, W_DIM)

    edit_id = uuid.uuid4().hex
    source: SeedSource | LatentSource
    if latent_array is not None:
        source = LatentSource(key=edit_key(edit_id, jobs.LATENT_IN_FILE))
        storage.put(source.key, npy_bytes(latent_array))
    else:
        assert seed is not None
        source = SeedSource(seed=seed)
    audio_key = edit_key(edit_id, jobs.AUDIO_FILE)
    storage.put(audio_key, audio_bytes)

    job = EditJob(
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
        "source": {"kind": "seed", "seed": seed} if seed is not None else {"kind": "latent"},
        "audio_filename": audio.filename,
    }
    try:
        enqueue_edit(redis, settings, job, meta)
    except RedisError as exc:
        storage.delete_prefix(edit_key(edit_id, ""))
        logger.error("could not queue edit %s: %s", edit_id, exc)
        raise Problem(
            503,
            "queue-unavailable",
            "the job queue is unreachable; try again later",
            headers={"Retry-After": "5"},
        ) from exc

    response.headers["Location"] = f"/edits/{edit_id}"
    return EditCreated(id=edit_id, status="queued", links=_links(edit_id, succeeded=False))


@router.get("/{edit_id}", response_model=EditPublic, responses=ERRORS, summary="Follow an edit")
def get_edit(edit_id: EditId, settings: SettingsDep, redis: RedisDep) -> EditPublic:
    job = fetch_edit(redis, edit_id)
    if job is None:
        raise Problem(404, "edit-not-found", f"no edit with id {edit_id}")
    meta = job.get_meta(refresh=False)
    payload = EditJob.model_validate(job.kwargs["payload"])
    state = edit_status(job)
    position = None
    if state == "queued":
        position = edit_queue(redis, settings, payload.profile).get_job_position(edit_id)
    succeeded = state == "succeeded"
    return EditPublic(
        id=edit_id,
        status=state,  # type: ignore[arg-type]
        progress=Progress(
            phase=meta.get("phase", jobs.Phase.queued),
            step=int(meta.get("step", 0)),
            steps=int(meta.get("steps", payload.params.steps)),
        ),
        queue_position=position,
        created_at=isoformat(job.created_at),
        started_at=isoformat(job.started_at),
        finished_at=isoformat(job.ended_at),
        profile=_profile_info(PROFILES[payload.profile]),
        source=meta.get("source", {"kind": payload.source.kind}),
        text=payload.text,
        parameters=payload.params,
        metrics=meta.get("metrics"),
        error=meta.get("error") or _failure(job, state),
        links=_links(edit_id, succeeded),
    )


def _failure(job: Any, state: str) -> dict[str, Any] | None:
    """A problem object for a job that died without reporting one (killed, timed out)."""
    if state != "failed":
        return None
    return {
        "type": "https://soundedit.dev/problems/edit-failed",
        "title": "Edit failed",
        "detail": "the worker stopped before finishing this edit",
    }


@router.get(
    "/{edit_id}/{filename}",
    responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}}, **ERRORS},
    summary="Download a file of a finished edit",
)
def get_edit_file(
    edit_id: EditId, filename: EditFile, redis: RedisDep, storage: StorageDep
) -> Response:
    job = fetch_edit(redis, edit_id)
    if job is None:
        raise Problem(404, "edit-not-found", f"no edit with id {edit_id}")
    state = edit_status(job)
    key = edit_key(edit_id, filename.value)
    if state != "succeeded" or not storage.exists(key):
        raise Problem(
            409,
            "not-ready",
            f"{filename.value} is not available: the edit is {state}",
            edit_status=state,
        )
    headers = {"Content-Disposition": f'inline; filename="{edit_id}-{filename.value}"'}
    return Response(storage.get(key), media_type=MEDIA_TYPES[filename], headers=headers)
