"""The HTTP front end: builds the FastAPI app. Run with ``soundedit api`` (uvicorn factory)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from app.limits import BodySizeLimit
from app.problems import install_problem_handlers
from app.queue import connect
from app.routes import edits, health
from app.settings import Settings, get_settings
from app.storage import LocalStorage
from models.profiles import resolve_profile

logger = logging.getLogger(__name__)

DESCRIPTION = """
Edit images by sound (CVPR 2022, *Sound-Guided Semantic Image Manipulation*).

Submit a sound and a source with `POST /edits`, poll `GET /edits/{id}`, then download
`result.png`, `source.png` and `latent.npy`. Errors are RFC 9457 `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        profile = resolve_profile(settings.profile, settings.model_cache)
        app.state.settings = settings
        app.state.profile = profile
        app.state.redis = connect(settings)
        app.state.storage = LocalStorage(settings.storage_root)
        logger.info("queueing edits for model profile %r (%s)", profile.name, profile.description)
        if profile.smoke:
            logger.warning("the smoke profile runs random weights: edits carry no meaning")
        if not settings.api_key_list():
            logger.warning(
                "no API keys configured (SOUNDEDIT_API_KEYS): anyone who reaches this API can use it"
            )
        yield
        app.state.redis.close()

    app = FastAPI(
        title="soundedit",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_request_bytes)
    if origins := settings.cors_origin_list():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Idempotency-Key", "Content-Type"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    install_problem_handlers(app)
    app.include_router(edits.router)
    app.include_router(health.router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, with optional file fields stated as files only.

    FastAPI writes an optional ``UploadFile`` as "binary string or null", but a multipart part
    cannot be null: a client may only leave it out.
    """
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for component in schema.get("components", {}).get("schemas", {}).values():
            for prop in component.get("properties", {}).values():
                options = prop.get("anyOf", [])
                files = [
                    o for o in options if "contentMediaType" in o or o.get("format") == "binary"
                ]
                if files and all(o in files or o.get("type") == "null" for o in options):
                    prop.pop("anyOf")
                    prop.update(files[0])
        app.openapi_schema = schema
    return app.openapi_schema
