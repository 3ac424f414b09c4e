"""The contract between the API and the worker: the job payload and the progress it reports.

The API enqueues ``JOB_FUNCTION`` by dotted path with a JSON payload of ``EditJob``; the worker
validates the payload again with the same model. Nothing here imports torch.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, Field

JOB_FUNCTION = "worker.jobs.run_edit"

MAX_SEED = 2**32 - 1
MAX_TEXT_CHARS = 300


class Phase(StrEnum):
    """What a running edit is doing; reported in ``GET /edits/{id}``."""

    queued = "queued"
    loading = "loading"  # decoding inputs, encoding the sound
    aligning = "aligning"  # a photo: finding and aligning the face, or cropping
    inverting = "inverting"  # a photo: projecting it into the generator's W+ space
    editing = "editing"  # the latent optimisation
    saving = "saving"
    done = "done"


class EditParameters(BaseModel):
    """The optimiser's knobs (paper Eq. 2); every field is filled before enqueueing."""

    steps: int = Field(ge=1, description="Optimisation steps.")
    lr: float = Field(gt=0, le=1, description="Adam learning rate (peak of the schedule).")
    lambda_l2: float = Field(ge=0, le=10, description="Weight of ||w - w_source||² (λ_L2).")
    lambda_id: float = Field(ge=0, le=10, description="Weight of the identity loss (λ_ID).")
    truncation: float = Field(gt=0, le=1, description="Truncation ψ for a seed source.")
    random_seed: int = Field(ge=0, le=MAX_SEED, description="Seed for fresh noise and ties.")
    text_mode: Literal["mix", "sum"] = Field(
        description="How a text prompt joins the sound: W+ style mixing or a summed loss."
    )
    inversion_steps: int = Field(ge=1, description="Steps projecting an uploaded photo into W+.")


class SeedSource(BaseModel):
    kind: Literal["seed"] = "seed"
    seed: int = Field(ge=0, le=MAX_SEED)


class LatentSource(BaseModel):
    kind: Literal["latent"] = "latent"
    key: str  # storage key of a float32 .npy of shape (n_latent, w_dim)


MAX_FACE_INDEX = 31


class ImageSource(BaseModel):
    kind: Literal["image"] = "image"
    key: str  # storage key of the uploaded photo, as sent
    face_index: int = Field(default=0, ge=0, le=MAX_FACE_INDEX)  # 0 = the largest face


Source = Annotated[SeedSource | LatentSource | ImageSource, Field(discriminator="kind")]


class EditJob(BaseModel):
    """Everything a worker needs to run one edit; files are storage keys, never bytes."""

    edit_id: str
    profile: str
    audio_key: str
    source: Source
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    params: EditParameters

    def batch_key(self) -> tuple[object, ...]:
        """Edits with equal keys can be optimised as one batch: same models, same optimiser
        settings, and text joining the sound in all of them (the same way) or in none."""
        p = self.params
        text_mode = p.text_mode if self.text else None
        return (self.profile, p.steps, p.lr, p.lambda_l2, p.lambda_id, text_mode)


# Names of the files an edit leaves in storage (see ``app.storage.edit_key``).
AUDIO_FILE = "audio"
IMAGE_FILE = "image"  # an uploaded photo, as sent
LATENT_IN_FILE = "source_latent.npy"
RESULT_FILE = "result.png"
SOURCE_FILE = "source.png"
LATENT_FILE = "latent.npy"
REPORT_FILE = "report.json"
ALIGNED_FILE = "aligned.png"  # a photo source, aligned or cropped to the generator's size
RECONSTRUCTION_FILE = "reconstruction.png"  # G(inverted latent): what the edit starts from
PREVIEW_FILE = "preview.png"  # the latest intermediate image, replaced every few steps
