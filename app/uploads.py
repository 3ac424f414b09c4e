"""Checks on uploaded files, done in the API so a bad upload is a 4xx, not a failed job."""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
from fastapi import UploadFile

from app.problems import Problem
from models.images import ImageError, load_image

CHUNK_BYTES = 1 << 16


async def read_upload(upload: UploadFile, field: str, limit: int) -> bytes:
    """The whole file, refusing anything over ``limit`` bytes before it is all in memory."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await upload.read(CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise Problem(413, "upload-too-large", f"{field} exceeds {limit} bytes", field=field)
        chunks.append(chunk)
    if size == 0:
        raise Problem(422, "empty-upload", f"{field} is an empty file", field=field)
    return b"".join(chunks)


def check_audio(data: bytes, field: str, max_seconds: float) -> float:
    """Decode ``data`` as far as needed to refuse what the worker could not use; returns seconds."""
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # libsndfile says "Format not recognised" and similar
        raise Problem(
            415,
            "unsupported-audio",
            f"{field} is not a readable audio file (WAV, FLAC, OGG or MP3): {exc}",
            field=field,
        ) from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise Problem(422, "empty-audio", f"{field} has no samples", field=field)
    seconds = info.frames / info.samplerate
    if seconds > max_seconds:
        raise Problem(
            422,
            "audio-too-long",
            f"{field} lasts {seconds:.1f} s; the limit is {max_seconds:g} s",
            field=field,
        )
    try:
        samples, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:
        raise Problem(
            415, "unsupported-audio", f"{field} could not be decoded: {exc}", field=field
        ) from exc
    if samples.size == 0 or not np.isfinite(samples).all():
        raise Problem(422, "invalid-audio", f"{field} has no finite samples", field=field)
    if not np.any(samples):
        raise Problem(422, "silent-audio", f"{field} is pure silence", field=field)
    return seconds


def check_latent(data: bytes, field: str, n_latent: int, w_dim: int) -> np.ndarray:
    """A W+ latent as float32 (n_latent, w_dim), from ``.npy`` of that shape or (1, n_latent, w_dim)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise Problem(
            415, "unsupported-latent", f"{field} is not a .npy array: {exc}", field=field
        ) from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise Problem(422, "invalid-latent", f"{field} must hold a numeric array", field=field)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != (n_latent, w_dim):
        raise Problem(
            422,
            "invalid-latent",
            f"{field} has shape {list(array.shape)}; this profile needs [{n_latent}, {w_dim}] "
            f"or [1, {n_latent}, {w_dim}]",
            field=field,
        )
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise Problem(422, "invalid-latent", f"{field} has non-finite values", field=field)
    return array


def check_image(data: bytes, field: str, max_pixels: int) -> None:
    """Refuse what the worker could not decode: not an image, a pixel bomb, too small."""
    try:
        load_image(data, max_pixels)
    except ImageError as exc:
        slug = {413: "image-too-large", 415: "unsupported-image"}.get(exc.status, "invalid-image")
        raise Problem(exc.status, slug, f"{field}: {exc}", field=field) from exc
