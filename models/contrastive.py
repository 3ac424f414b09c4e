"""Contrastive losses that align audio embeddings with CLIP text embeddings, and SpecAugment.

Two objectives, selectable:

- ``"bce"``, the paper's Eq. 1: binary cross-entropy on the scaled cosine similarity of every
  audio/text pair in the batch, positives on the diagonal (each pair judged on its own);
- ``"infonce"``, what the official training code optimises: symmetric InfoNCE (cross-entropy
  over the batch, audio -> text and text -> audio).

Either objective can add the paper's self-supervised term: the same pairing between each
clip and a SpecAugment view of it. With both terms, the official loss is the mean of four
InfoNCE terms (audio<->text both ways, audio<->view both ways).

Similarities are cosines times a logit scale ``1 / temperature``, fixed or learned (stored as
its logarithm and clamped like CLIP's). The official code multiplies by ``exp(0.07)`` ~ 1.07,
i.e. temperature ~ 0.93, almost certainly meant as CLIP's 1 / 0.07; 0.07 is the default here.

SpecAugment follows the official code on the model input before its raw reshape: the (1, 128,
512) input is viewed as the (512, 128) resized spectrogram (mel rows x time columns) and each
of ``num_masks`` rounds zeroes one band of up to 30 % of the mel rows and one span of up to
15 % of the time columns. (The official code calls these the "time" and "frequency" masks,
its variable names having the two axes swapped; the fractions here are what it does.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from models.audio import INPUT_HEIGHT, INPUT_WIDTH, RESIZED_COLS, RESIZED_ROWS

LossKind = Literal["infonce", "bce"]
LOSS_KINDS: tuple[str, ...] = ("infonce", "bce")
DEFAULT_TEMPERATURE = 0.07  # CLIP's initial temperature (logit scale ~14.3)
UPSTREAM_TEMPERATURE = 1.0 / math.exp(0.07)  # what the official code's exp(0.07) scale means
MAX_LOGIT_SCALE = 100.0  # CLIP's clamp on a learned logit scale
SPEC_AUGMENT_ROUNDS = 2  # official: two rounds of (mel mask, time mask)
MEL_MASK_FRACTION = 0.30  # widest mel band masked, as a share of the 512 resized mel rows
TIME_MASK_FRACTION = 0.15  # widest time span masked, as a share of the 128 resized columns


@dataclass
class LossOutput:
    total: Tensor  # () the loss to minimise
    terms: dict[str, Tensor]  # () each term, detached, for logging


def info_nce(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Cross-entropy of each row of (B, B) ``logits`` against its positives.

    ``targets`` (B, B) bool marks positives (default: the diagonal); a row with several
    positives spreads its target probability over them evenly.
    """
    if targets is None:
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
    probs = targets.to(logits.dtype)
    return F.cross_entropy(logits, probs / probs.sum(dim=1, keepdim=True))


def pairwise_bce(logits: Tensor, targets: Tensor | None = None) -> Tensor:
    """Binary cross-entropy over all (B, B) pairs, mean over pairs (the paper's Eq. 1)."""
    if targets is None:
        targets = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))


class ContrastiveLoss(nn.Module):
    """Audio <-> text (and audio <-> SpecAugment view) contrastive loss with a logit scale."""

    def __init__(
        self,
        kind: LossKind = "infonce",  # "infonce" (official code) or "bce" (paper Eq. 1)
        *,
        temperature: float = DEFAULT_TEMPERATURE,  # similarity divisor (initial, if learned)
        learnable_temperature: bool = False,  # learn log(1 / temperature) with the encoder
    ) -> None:
        super().__init__()
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {kind!r}; choose one of {list(LOSS_KINDS)}")
        if temperature < 1.0 / MAX_LOGIT_SCALE:
            raise ValueError(f"temperature must be >= {1.0 / MAX_LOGIT_SCALE}, got {temperature}")
        self.kind: LossKind = kind
        init = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        self.log_scale = nn.Parameter(init, requires_grad=learnable_temperature)

    @property
    def logit_scale(self) -> Tensor:
        """() the multiplier of the cosines, clamped to CLIP's maximum."""
        return self.log_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def pair_loss(self, a: Tensor, b: Tensor, targets: Tensor | None = None) -> Tensor:
        """Mean of the two directions for (B, D) embeddings ``a`` and ``b`` (any norm)."""
        logits = (
            self.logit_scale * F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
        )
        if self.kind == "bce":
            return pairwise_bce(logits, targets)  # symmetric already
        t = targets
        return (info_nce(logits, t) + info_nce(logits.T, None if t is None else t.T)) / 2

    def forward(
        self,
        audio: Tensor,  # (B, D) audio embeddings
        text: Tensor,  # (B, D) text embeddings of each clip's prompt
        view: Tensor | None = None,  # (B, D) embeddings of the SpecAugment views, or None
        targets: Tensor | None = None,  # (B, B) bool positives; None: the diagonal
    ) -> LossOutput:
        if audio.ndim != 2 or audio.shape != text.shape:
            raise ValueError(
                f"audio and text embeddings must both be (B, D); got {tuple(audio.shape)} "
                f"and {tuple(text.shape)}"
            )
        if view is not None and view.shape != audio.shape:
            raise ValueError(f"view embeddings {tuple(view.shape)} != audio {tuple(audio.shape)}")
        text_term = self.pair_loss(audio, text, targets)
        terms = {"audio_text": text_term.detach()}
        if view is None:
            return LossOutput(text_term, terms)
        # A clip and its own view are the only positives, whatever the labels say.
        view_term = self.pair_loss(audio, view)
        terms["audio_view"] = view_term.detach()
        return LossOutput((text_term + view_term) / 2, terms)

    def extra_repr(self) -> str:
        learned = "learned" if self.log_scale.requires_grad else "fixed"
        return f"kind={self.kind}, logit_scale={float(self.logit_scale):.3g} ({learned})"


def same_label_targets(labels: Tensor) -> Tensor:
    """(B,) class indices -> (B, B) bool: clips of one class are each other's positives."""
    return labels[:, None] == labels[None, :]


def spec_augment(
    inputs: Tensor,  # (B, 1, 128, 512) model inputs
    *,
    seed: int,  # masks come from this seed alone: the same batch and seed, the same view
    rounds: int = SPEC_AUGMENT_ROUNDS,
    mel_fraction: float = MEL_MASK_FRACTION,
    time_fraction: float = TIME_MASK_FRACTION,
) -> Tensor:
    """A SpecAugment view of each input, each with its own masks (see the module docstring).

    Runs on the CPU with the global RNG forked and seeded, so neither the caller's RNG state
    nor the device changes the masks.
    """
    if inputs.ndim != 4 or tuple(inputs.shape[1:]) != (1, INPUT_HEIGHT, INPUT_WIDTH):
        raise ValueError(
            f"expected inputs (B, 1, {INPUT_HEIGHT}, {INPUT_WIDTH}), got {tuple(inputs.shape)}"
        )
    mel_mask = torchaudio.transforms.FrequencyMasking(int(mel_fraction * RESIZED_ROWS), True)
    time_mask = torchaudio.transforms.TimeMasking(int(time_fraction * RESIZED_COLS), True)
    x = inputs.detach().to("cpu", torch.float32).reshape(-1, 1, RESIZED_ROWS, RESIZED_COLS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(rounds):
            x = time_mask(mel_mask(x))  # (B, 1, 512, 128)
    return x.reshape(inputs.shape).to(inputs.device)
