"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from app.deps import ProfileDep, RedisDep, StorageDep
from app.queue import live_workers
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
def readyz(redis: RedisDep, storage: StorageDep, profile: ProfileDep) -> JSONResponse:
    notes: list[str] = []
    try:
        redis.ping()
        redis_ok = True
        workers = [w for w in live_workers(redis) if w.get("profile") == profile.name]
    except RedisError as exc:
        redis_ok, workers = False, []
        notes.append(f"redis unreachable: {exc}")
    storage_ok = storage.writable()
    if not storage_ok:
        notes.append("storage is not writable")
    if redis_ok and not workers:
        notes.append(f"no live worker serves profile {profile.name!r}")
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
