"""Model profiles: which generator, CLIP and audio encoder an edit runs on, and its defaults.

This module is light (no torch) so the API can resolve profiles and check inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

W_DIM = 512  # StyleGAN2 style dimension for every profile here


@dataclass(frozen=True)
class EditDefaults:
    """Defaults of the paper's optimiser (Eq. 2) for one domain."""

    steps: int
    lr: float
    lambda_l2: float
    lambda_id: float
    truncation: float
    inversion_steps: int  # projecting an uploaded photo into W+


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    resolution: int  # generator output H = W
    defaults: EditDefaults
    domain: Literal["face", "other"]  # faces are aligned FFHQ-style; other photos centre-cropped
    identity: tuple[str, ...] = ()  # identity networks, in order of preference: "ir_se50", "sface"
    smoke: bool = False  # random weights: results carry no meaning

    @property
    def n_latent(self) -> int:
        """W+ layers of a StyleGAN2 generator of this resolution: 2·log2(size) − 2."""
        return 2 * (self.resolution.bit_length() - 1) - 2


PROFILES: dict[str, Profile] = {
    "ffhq": Profile(
        name="ffhq",
        description="StyleGAN2 FFHQ 1024 px faces, CLIP ViT-B/32 (openai), the paper's audio encoder",
        resolution=1024,
        defaults=EditDefaults(
            steps=300,
            lr=0.05,
            lambda_l2=0.008,
            lambda_id=0.005,
            truncation=0.7,
            inversion_steps=500,
        ),
        domain="face",
        identity=("ir_se50", "sface"),
    ),
    "landscape": Profile(
        name="landscape",
        description="The paper's 256 px landscape StyleGAN2, CLIP ViT-B/32, the paper's audio encoder",
        resolution=256,
        defaults=EditDefaults(
            steps=300, lr=0.05, lambda_l2=0.002, lambda_id=0.0, truncation=0.7, inversion_steps=500
        ),
        domain="other",
    ),
    "smoke": Profile(
        name="smoke",
        description=(
            "Small seeded random-weight models of the real architectures (64 px StyleGAN2, "
            "a tiny CLIP, the official audio encoder layout): proves the pipeline, edits mean nothing"
        ),
        resolution=64,
        defaults=EditDefaults(
            steps=20, lr=0.05, lambda_l2=0.008, lambda_id=0.0, truncation=0.7, inversion_steps=30
        ),
        domain="face",
        identity=("sface",),
        smoke=True,
    ),
}

# "auto" takes the first profile whose weights are all in the cache.
AUTO_ORDER = ("ffhq", "landscape", "smoke")


def profile_ready(name: str, cache_dir: Path) -> bool:
    """Whether every required weight file of ``name`` is present and verified in ``cache_dir``."""
    if PROFILES[name].smoke:
        return True
    from models.weights import profile_available

    return profile_available(name, cache_dir)


def resolve_profile(requested: str, cache_dir: Path) -> Profile:
    """The profile to run: the requested one, or for ``auto`` the best one that can be had."""
    if requested != "auto":
        if requested not in PROFILES:
            choices = ", ".join(["auto", *PROFILES])
            raise ValueError(f"unknown profile {requested!r}; choose one of: {choices}")
        return PROFILES[requested]
    for name in AUTO_ORDER:
        if profile_ready(name, cache_dir):
            return PROFILES[name]
    raise AssertionError("unreachable: the smoke profile needs no weights")
