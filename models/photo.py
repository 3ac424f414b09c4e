"""A real photo as an edit's source: align (faces) or crop (other domains), then invert.

The engine calls ``prepare_photo`` for an upload and edits the returned latent like a seeded
one. Phases, as reported through ``on_phase``: "aligning" (face detection + FFHQ alignment, or
the centre crop), then "inverting" (``on_step`` once per step); "editing" is the engine's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from models.align import align_face, crop_center
from models.face_detect import FaceDetector
from models.identity import IdentityLoss
from models.invert import CancelCheck, InvertCallback, InvertConfig, invert
from models.optimize import Generator

logger = logging.getLogger(__name__)

Domain = Literal["face", "other"]
DOMAINS: tuple[str, ...] = ("face", "other")
PhaseCallback = Callable[[str], None]


@dataclass
class PhotoSource:
    """What an edit of a real photo starts from."""

    aligned: np.ndarray  # (H, W, 3) uint8: the aligned / cropped photo, generator-sized
    latent: Tensor  # (1, n_latent, w_dim): its W+ inversion
    reconstruction: np.ndarray  # (H, W, 3) uint8: G(latent)
    psnr: float  # dB, reconstruction vs aligned
    ssim: float
    faces_found: int  # faces detected in the photo (0 for the "other" domain)
    landmarks: np.ndarray | None = None  # (5, 2) the chosen face's landmarks in the photo


def pil_to_tensor(image: Image.Image, device: torch.device | str = "cpu") -> Tensor:
    """RGB image -> (1, 3, H, W) float in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.float32))  # (H, W, 3)
    return (pixels.permute(2, 0, 1)[None] / 127.5 - 1.0).to(device)


def tensor_to_uint8(image: Tensor) -> np.ndarray:
    """(1, 3, H, W) in about [-1, 1] -> (H, W, 3) uint8."""
    pixels = (image[0].detach().float().clamp(-1, 1) + 1) * 127.5
    return pixels.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def prepare_photo(
    generator: Generator,
    image: Image.Image,
    *,
    domain: Domain,
    face_index: int = 0,
    steps: int,
    on_step: InvertCallback | None = None,
    should_cancel: CancelCheck | None = None,
    identity: IdentityLoss | None = None,
    perceptual: nn.Module | None = None,
    detector: FaceDetector | None = None,
    config: InvertConfig | None = None,
    on_phase: PhaseCallback | None = None,
) -> PhotoSource:
    """Align (``domain="face"``) or centre-crop (``"other"``) a photo to the generator's size,
    then invert it into W+ in ``steps`` steps.

    ``face_index`` picks the face (0 = largest); ``identity`` adds an identity term to the
    inversion of faces; ``perceptual`` is LPIPS when available (else the structure loss).
    Raises ``models.align.FaceNotFound`` and ``models.optimize.EditCanceled``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {list(DOMAINS)}, got {domain!r}")
    resolution: int = generator.resolution  # type: ignore[attr-defined]
    device = generator.w_avg.device  # type: ignore[attr-defined]
    if on_phase is not None:
        on_phase("aligning")
    landmarks: np.ndarray | None = None
    if domain == "face":
        aligned_face = align_face(image, resolution, face_index=face_index, detector=detector)
        aligned, faces_found = aligned_face.image, aligned_face.faces_found
        landmarks = aligned_face.face.landmarks
    else:
        aligned, faces_found = crop_center(image, resolution), 0

    if on_phase is not None:
        on_phase("inverting")
    settings = replace(config if config is not None else InvertConfig(), steps=steps)
    result = invert(
        generator,
        pil_to_tensor(aligned, device),
        settings,
        perceptual=perceptual,
        identity=identity if domain == "face" else None,
        on_step=on_step,
        should_cancel=should_cancel,
    )
    return PhotoSource(
        aligned=np.asarray(aligned, dtype=np.uint8).copy(),
        latent=result.latent,
        reconstruction=tensor_to_uint8(result.image),
        psnr=result.psnr,
        ssim=result.ssim,
        faces_found=faces_found,
        landmarks=landmarks,
    )
