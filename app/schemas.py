"""Response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.jobs import EditParameters

EditStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class PhaseProgress(BaseModel):
    step: int
    steps: int


class Progress(BaseModel):
    phase: str = Field(
        description="queued, loading, aligning and inverting (photos), editing, saving or done."
    )
    step: int = Field(description="Steps of the current phase done so far.")
    steps: int = Field(description="Steps of the current phase in total.")
    phases: dict[str, PhaseProgress] = Field(
        default_factory=dict, description="Each phase reached so far: aligning, inverting, editing."
    )
    elapsed_s: float | None = Field(default=None, description="Seconds since a worker started it.")
    eta_s: float | None = Field(default=None, description="Estimated seconds left, while running.")


class EditLinks(BaseModel):
    self: str
    events: str | None = Field(default=None, description="Server-Sent Events of this edit.")
    preview: str | None = Field(default=None, description="The latest intermediate image (PNG).")
    report: str | None = Field(
        default=None, description="The quality report (JSON), once succeeded."
    )
    result: str | None = Field(default=None, description="The edited image (PNG), once succeeded.")
    source: str | None = Field(default=None, description="The source image (PNG), once succeeded.")
    latent: str | None = Field(
        default=None, description="The edited W+ latent (.npy, float32, [n_latent, 512])."
    )
    aligned: str | None = Field(
        default=None, description="A photo source, aligned or cropped (PNG)."
    )
    reconstruction: str | None = Field(
        default=None,
        description="A photo source as the generator reproduces it: where the edit starts (PNG).",
    )


class ProfileInfo(BaseModel):
    name: str
    resolution: int
    n_latent: int
    smoke: bool = Field(description="True when the models are random: the result means nothing.")
    note: str | None = None


class EditCreated(BaseModel):
    """Answer to ``POST /edits``: where to poll."""

    id: str
    status: EditStatus
    links: EditLinks


class EditPublic(BaseModel):
    """The state of one edit, as ``GET /edits/{id}`` shows it."""

    id: str
    status: EditStatus
    progress: Progress
    queue_position: int | None = Field(
        default=None, description="0 = next to run; only while queued."
    )
    attempts: int = Field(default=0, description="Runs started; more than 1 after a worker died.")
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    profile: ProfileInfo
    source: dict[str, Any] = Field(description="What the edit started from (seed or latent).")
    text: str | None = None
    parameters: EditParameters
    metrics: dict[str, Any] | None = Field(
        default=None,
        description="Quality report once succeeded: CLIP similarities before/after, latent L2, ...",
    )
    error: dict[str, Any] | None = Field(
        default=None, description="A problem object when the edit failed."
    )
    links: EditLinks


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    redis: bool
    storage: bool
    profile: str = Field(description="The model profile this API queues edits for.")
    workers: list[dict[str, Any]] = Field(description="Live workers serving that profile.")
    notes: list[str] = Field(default_factory=list)
