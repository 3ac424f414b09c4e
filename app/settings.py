"""Service configuration: one settings object, read from ``SOUNDEDIT_*`` environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ProfileName = Literal["auto", "smoke", "ffhq", "landscape"]


class Settings(BaseSettings):
    """Everything the API, the worker and the CLI can be told; defaults run on one machine."""

    model_config = SettingsConfigDict(env_prefix="SOUNDEDIT_", env_file=".env", extra="ignore")

    # Where things live.
    redis_url: str = "redis://127.0.0.1:6379/0"
    storage_root: Path = Path("var/storage")  # uploads and results, one folder per edit
    model_cache: Path = Path.home() / ".cache" / "soundedit"  # downloaded weights
    offline: bool = False  # never download weights; only use and verify the cache
    queue_name: str = "edits"

    # Which models the worker loads.
    profile: ProfileName = "auto"
    audio_encoder: Path | None = None  # a trained encoder (soundedit train) replacing the profile's
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...

    # How the worker runs edits. Batching, autocast and compilation pay on a GPU.
    max_batch: int | None = Field(default=None, ge=1, le=64)  # None: 8 on a GPU, 1 on a CPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast of the optimiser's passes
    compile_mode: Literal["none", "default", "reduce-overhead", "max-autotune"] = "none"

    # Upload limits.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)  # whole multipart body
    max_upload_bytes: int = Field(default=25 * 1024 * 1024, gt=0)  # each file
    max_audio_seconds: float = Field(default=60.0, gt=0)
    max_image_pixels: int = Field(default=4096 * 4096, gt=0)

    # Edit parameters: bounds on what clients ask for, and a server-wide default.
    max_steps: int = Field(default=1000, gt=0)
    default_steps: int | None = Field(default=None, gt=0)  # None: the profile's default

    # How long job records and stored files are kept; how long one edit may run.
    result_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    job_timeout_s: int = Field(default=3600, gt=0)
    max_attempts: int = Field(
        default=3, gt=0
    )  # runs of an edit whose worker died, before giving up

    # Access and back-pressure.
    api_keys: SecretStr | None = None  # comma-separated; unset: no authentication
    max_active_per_key: int = Field(default=20, gt=0)  # queued + running edits of one key
    max_queue_length: int = Field(default=200, gt=0)  # beyond it: 503 + Retry-After
    cors_origins: str = ""  # comma-separated origins allowed by CORS; "*" for any

    # Webhooks: the HMAC-SHA256 secret that signs every delivery (unset: webhooks refused).
    webhook_secret: SecretStr | None = None

    def api_key_list(self) -> tuple[str, ...]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return tuple(key.strip() for key in raw.split(",") if key.strip())

    def cors_origin_list(self) -> tuple[str, ...]:
        return tuple(origin.strip() for origin in self.cors_origins.split(",") if origin.strip())


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings; tests override by building their own ``Settings``."""
    return Settings()
