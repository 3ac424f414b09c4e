"""Liveness and readiness probes, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from app.deps import ProfileDep, RedisDep, SettingsDep, StorageDep
from app.metrics import render
from app.queue import WORKER_KEY_PREFIX, edit_queue, live_workers
from app.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The API process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; the body says why."}},
    summary="Redis answers, storage is writable, a worker has this profile's models loaded",
)
def readyz(
    redis: RedisDep, storage: StorageDep, profile: ProfileDep, settings: SettingsDep
) -> JSONResponse:
    notes: list[str] = []
    try:
        redis.ping()
        redis_ok = True
        queue = edit_queue(redis, settings, profile.name).name
        workers = [w for w in live_workers(redis) if queue in w.get("queues", "").split(",")]
    except RedisError as exc:
        redis_ok, workers = False, []
        notes.append(f"redis unreachable: {exc}")
    storage_ok = storage.writable()
    if not storage_ok:
        notes.append("storage is not writable")
    if redis_ok and not workers:
        notes.append(f"no live worker serves the queue of profile {profile.name!r}")
    if profile.smoke:
        notes.append("smoke profile: random weights, edits carry no meaning")
    ready = redis_ok and storage_ok and bool(workers)
    body = Readiness(
        ready=ready,
        redis=redis_ok,
        storage=storage_ok,
        profile=profile.name,
        workers=workers,
        notes=notes,
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}
    },
    summary="Queue depth, edits by status, durations, workers, failures",
)
def metrics(redis: RedisDep, settings: SettingsDep, profile: ProfileDep) -> Response:
    queue = edit_queue(redis, settings, profile.name)
    return Response(render(redis, [queue], WORKER_KEY_PREFIX), media_type=CONTENT_TYPE_LATEST)
