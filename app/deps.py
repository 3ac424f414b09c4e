"""FastAPI dependencies: the per-app singletons built in ``create_app``'s lifespan, and the caller."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, Request
from redis import Redis

from app.problems import Problem
from app.settings import Settings
from app.storage import LocalStorage
from models.profiles import Profile

ANONYMOUS = "anonymous"


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _redis(request: Request) -> Redis:
    return request.app.state.redis


def _storage(request: Request) -> LocalStorage:
    return request.app.state.storage


def _profile(request: Request) -> Profile:
    return request.app.state.profile


def _client(
    request: Request,
    x_api_key: Annotated[
        str | None, Header(description="An API key, when the server requires one.")
    ] = None,
) -> str:
    """Who is calling: a digest of their API key, or ``anonymous`` when keys are off."""
    keys = request.app.state.settings.api_key_list()
    if not keys:
        return ANONYMOUS
    if not x_api_key:
        raise Problem(
            401, "api-key-required", "send an API key in the X-API-Key header",
            headers={"WWW-Authenticate": "ApiKey"},
        )  # fmt: skip
    given = x_api_key.encode()
    # Compare with every key, without stopping early, so timing says nothing about which matched.
    matches = [hmac.compare_digest(given, key.encode()) for key in keys]
    if not any(matches):
        raise Problem(
            401, "api-key-invalid", "the API key is not valid",
            headers={"WWW-Authenticate": "ApiKey"},
        )  # fmt: skip
    return "key-" + hashlib.sha256(given).hexdigest()[:16]


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
StorageDep = Annotated[LocalStorage, Depends(_storage)]
ProfileDep = Annotated[Profile, Depends(_profile)]
ClientDep = Annotated[str, Depends(_client)]
