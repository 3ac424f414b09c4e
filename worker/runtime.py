"""The worker process's resident state: settings, storage and the models, loaded once."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from app.settings import Settings, get_settings
from app.storage import LocalStorage
from models.profiles import Profile, resolve_profile

if TYPE_CHECKING:
    from models.engine import EditEngine

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engine: EditEngine | None = None
model_loads = 0  # how many times this process loaded models; stays 1 in a healthy worker


def settings() -> Settings:
    return get_settings()


def storage() -> LocalStorage:
    return LocalStorage(settings().storage_root)


def profile() -> Profile:
    current = settings()
    return resolve_profile(current.profile, current.model_cache)


def engine() -> EditEngine:
    """The loaded models; loads them on first use (``EditWorker`` does so at start-up)."""
    global _engine, model_loads
    with _lock:
        if _engine is None:
            from models.engine import EditEngine

            chosen = profile()
            current = settings()
            logger.info("loading models for profile %r on %s", chosen.name, current.device)
            _engine = EditEngine.load(
                chosen,
                cache_dir=current.model_cache,
                device=current.device,
                audio_encoder=current.audio_encoder,
                precision=current.precision,
                compile_mode=None if current.compile_mode == "none" else current.compile_mode,
            )
            model_loads += 1
            logger.info("models loaded (load #%d): %s", model_loads, _engine.describe())
            if _engine.compile_mode is not None:
                logger.info(
                    "compiling the generator (%s) before the first edit", current.compile_mode
                )
                logger.info("compiled in %.1f s", _engine.warm_up())
        return _engine
