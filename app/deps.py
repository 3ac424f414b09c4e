"""FastAPI dependencies: the per-app singletons built in ``create_app``'s lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from app.settings import Settings
from app.storage import LocalStorage
from models.profiles import Profile


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _redis(request: Request) -> Redis:
    return request.app.state.redis


def _storage(request: Request) -> LocalStorage:
    return request.app.state.storage


def _profile(request: Request) -> Profile:
    return request.app.state.profile


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
StorageDep = Annotated[LocalStorage, Depends(_storage)]
ProfileDep = Annotated[Profile, Depends(_profile)]
