"""CLIP text targets for the audio encoder: the profile's CLIP and a bank of prompt embeddings.

The CLIP text encoder is frozen, so every prompt a run can use (the plain prompt of each label
and its augmented variants) is embedded once up front; a training step then only picks rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from models.clip import FrozenClip, load_clip, random_clip
from models.profiles import PROFILES
from models.prompts import PromptAugmenter, label_prompt
from models.weights import CLIP_VIT_B32_OPENAI, cached_path, file_state

logger = logging.getLogger(__name__)

SMOKE_CLIP_SEED = 0  # the smoke profile's CLIP (models.engine builds it from the same seed)
REAL_CLIP_MODEL = "ViT-B-32"  # the paper's CLIP for the real profiles
TEXT_BATCH = 256  # prompts per text-encoder forward


def profile_clip(profile: str, cache_dir: Path, device: str | torch.device = "cpu") -> FrozenClip:
    """The CLIP of a model profile: the tiny seeded one for ``smoke``, else ViT-B/32 (openai)
    from the weight cache, with an error that says how to fetch it."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if PROFILES[profile].smoke:
        return random_clip(SMOKE_CLIP_SEED, device=device)
    state = file_state(CLIP_VIT_B32_OPENAI, cache_dir)
    path = cached_path(CLIP_VIT_B32_OPENAI, cache_dir)
    if state != "present":
        raise FileNotFoundError(
            f"CLIP ViT-B/32 weights are {state} at {path}: run `soundedit models pull {profile}`"
        )
    return load_clip(REAL_CLIP_MODEL, path, device=device)


@torch.no_grad()
def encode_prompts(clip: FrozenClip, prompts: Sequence[str], batch: int = TEXT_BATCH) -> Tensor:
    """(P,) prompts -> (P, D) unit vectors, on the CPU, in float32."""
    chunks = [
        clip.encode_text(list(prompts[i : i + batch])).float().cpu()
        for i in range(0, len(prompts), batch)
    ]
    return torch.cat(chunks)


@dataclass
class PromptBank:
    """Every prompt of every label and its CLIP text embedding.

    Label ``l`` owns rows ``offsets[l] .. offsets[l] + counts[l] - 1``; the first is its plain
    prompt.
    """

    labels: list[str]  # class labels, in class-index order
    prompts: list[str]  # (P,) prompt texts
    offsets: Tensor  # (L,) int64 first row of each label
    counts: Tensor  # (L,) int64 rows of each label (>= 1)
    embeddings: Tensor  # (P, D) float32 unit vectors

    @property
    def plain(self) -> Tensor:
        """(L, D) the plain prompt's embedding of each label (zero-shot classifiers)."""
        return self.embeddings[self.offsets]

    def sample(self, labels: Tensor, generator: torch.Generator) -> Tensor:
        """(B,) class indices -> (B, D) embedding of a uniformly drawn prompt of each label."""
        labels = labels.cpu()
        u = torch.rand(labels.shape[0], generator=generator)  # (B,)
        pick = (u * self.counts[labels]).long().clamp(max=self.counts[labels] - 1)
        return self.embeddings[self.offsets[labels] + pick]


def build_prompt_bank(
    labels: Sequence[str],
    clip: FrozenClip,
    *,
    variants: int = 1,  # prompts per label; more than 1 needs WordNet
    seed: int = 0,  # seeds the augmentations
    template: str = "{}",  # wraps each label, e.g. "the sound of {}"
    augmenter: PromptAugmenter | None = None,
) -> PromptBank:
    """Prompts of ``labels`` (plain + augmented variants) and their text embeddings."""
    if not labels:
        raise ValueError("no labels")
    if variants > 1 and augmenter is None:
        augmenter = PromptAugmenter()
    prompts: list[str] = []
    offsets: list[int] = []
    counts: list[int] = []
    for label in labels:
        plain = label_prompt(label, template)
        mine = augmenter.variants(plain, variants, seed=seed) if augmenter else [plain]
        offsets.append(len(prompts))
        counts.append(len(mine))
        prompts.extend(mine)
    logger.info("embedding %d prompts of %d labels", len(prompts), len(labels))
    return PromptBank(
        labels=list(labels),
        prompts=prompts,
        offsets=torch.tensor(offsets, dtype=torch.int64),
        counts=torch.tensor(counts, dtype=torch.int64),
        embeddings=encode_prompts(clip, prompts),
    )
