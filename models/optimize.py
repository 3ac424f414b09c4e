"""Sound-guided latent optimisation (the paper's Eq. 2) and joint audio + text edits.

    w* = argmin_w  L_CLIP(G(w), a) + λ_L2 ||w - w_s||² + λ_ID L_ID(G(w), G(w_s))

Adam on a copy of the W+ latent, learning rate from a cosine ramp-down / linear ramp-up
schedule, generator / CLIP / identity networks frozen. Deterministic on CPU for equal inputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from models.clip import (
    LOSS_MODES,
    PREPROCESS_MODES,
    FrozenClip,
    LossMode,
    PreprocessMode,
    clip_loss,
)
from models.frozen import freeze
from models.identity import IdentityLoss

logger = logging.getLogger(__name__)

TextMode = Literal["mix", "sum"]
TEXT_MODES: tuple[str, ...] = ("mix", "sum")
NOISE_MODES: tuple[str, ...] = ("const", "random", "none")
# The paper mixes FFHQ's 18 W+ layers at 9: layers [0, 9) (coarse + middle) follow the sound,
# [9, 18) (fine) follow the text. Other generators keep the same fraction of their layers.
PAPER_N_LATENT = 18
PAPER_MIX_SPLIT = 9
DEFAULT_TRUNCATION = 0.7  # the official random start


class Generator(Protocol):
    """What the optimiser needs of ``models.stylegan2.Generator``."""

    n_latent: int
    w_dim: int
    z_dim: int

    def mapping(self, z: Tensor, truncation: float = 1.0) -> Tensor: ...

    def synthesis(self, wplus: Tensor, noise_mode: str = "const", noise: Any = None) -> Tensor: ...


class EditCanceled(Exception):
    """Raised inside the optimisation loop when ``should_cancel()`` returns True."""

    def __init__(self, step: int, phase: str) -> None:
        super().__init__(f"edit canceled at step {step} ({phase})")
        self.step = step
        self.phase = phase


def lr_schedule(t: float, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """Learning rate at progress ``t = step / steps`` in [0, 1).

    Linear ramp-up over the first ``rampup`` fraction (so step 0 has lr 0), cosine ramp-down over
    the last ``rampdown`` fraction; the official schedule, inherited from StyleCLIP.
    """
    if rampdown <= 0 or rampup <= 0:
        raise ValueError("rampdown and rampup must be positive fractions")
    down = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(down * math.pi)
    ramp *= min(1.0, t / rampup)
    return initial_lr * ramp


@dataclass
class EditConfig:
    """Settings of one edit; defaults are the official FFHQ ones."""

    steps: int = 300  # optimisation steps per run
    lr: float = 0.05  # peak Adam learning rate
    lambda_l2: float = 0.008  # weight of ||w - w_s||² (plain sum of squares)
    lambda_id: float = 0.005  # weight of the ArcFace loss; 0 skips the identity network
    text_mode: TextMode = "mix"  # audio + text: "mix" W+ layers or "sum" the CLIP losses
    text_weight: float = 1.0  # weight of the text CLIP loss in "sum" mode
    mix_layer_split: int | None = None  # first text layer in "mix"; None: n_latent * 9 / 18
    clip_preprocess: PreprocessMode = "resize"  # see models.clip
    clip_loss_mode: LossMode = "cosine"  # "cosine": 1 - cos; "upstream": 1 - cos·exp(0.07)
    noise_mode: str = "const"  # "random" makes results depend on the global RNG
    preview_every: int = 20  # StepInfo.preview every this many steps; 0 only on the last
    lr_rampdown: float = 0.25  # fraction of steps of the cosine ramp-down
    lr_rampup: float = 0.05  # fraction of steps of the linear ramp-up

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("lambda_l2", "lambda_id", "text_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {list(TEXT_MODES)}, got {self.text_mode!r}")
        if self.mix_layer_split is not None and self.mix_layer_split < 1:
            raise ValueError(f"mix_layer_split must be >= 1, got {self.mix_layer_split}")
        if self.clip_preprocess not in PREPROCESS_MODES:
            raise ValueError(
                f"clip_preprocess must be one of {list(PREPROCESS_MODES)}, "
                f"got {self.clip_preprocess!r}"
            )
        if self.clip_loss_mode not in LOSS_MODES:
            raise ValueError(
                f"clip_loss_mode must be one of {list(LOSS_MODES)}, got {self.clip_loss_mode!r}"
            )
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {list(NOISE_MODES)}, got {self.noise_mode!r}"
            )
        if self.preview_every < 0:
            raise ValueError(f"preview_every must be >= 0, got {self.preview_every}")
        for name in ("lr_rampdown", "lr_rampup"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")

    def layer_split(self, n_latent: int) -> int:
        """First W+ layer taken from the text-guided latent in "mix" mode.

        The paper's 9 of 18 layers, kept as a fraction for other generators (7 of 14 at 256 px,
        5 of 10 at 64 px) and clamped so that each latent contributes at least one layer.
        """
        if n_latent < 2:
            raise ValueError(f"mixing needs at least 2 W+ layers, got {n_latent}")
        if self.mix_layer_split is None:
            split = round(n_latent * PAPER_MIX_SPLIT / PAPER_N_LATENT)
            return min(max(split, 1), n_latent - 1)
        if self.mix_layer_split >= n_latent:
            raise ValueError(
                f"mix_layer_split {self.mix_layer_split} leaves no text layer of {n_latent}"
            )
        return self.mix_layer_split


@dataclass(frozen=True)
class StepInfo:
    """Progress of one optimisation step, passed to ``on_step``."""

    phase: str  # "audio", "text" (mix runs) or "joint" (audio alone, or "sum")
    phase_index: int  # 0-based run number within the edit
    phases: int  # runs in the edit (2 for "mix" with text, else 1)
    step: int  # 0-based step within the run
    steps: int  # steps per run
    lr: float
    loss: float  # total loss of this step
    clip: float  # CLIP term (weighted sum over targets)
    l2: float  # ||w - w_s||², before its weight
    identity: float | None  # identity loss before its weight; None when not evaluated
    image: Tensor = field(repr=False)  # (1, 3, H, W) in [-1, 1], G(w) before this step's update
    preview: bool = False  # True every ``preview_every`` steps and on the last step

    @property
    def progress(self) -> float:
        """Fraction of the whole edit done after this step, in (0, 1]."""
        return (self.phase_index * self.steps + self.step + 1) / (self.phases * self.steps)


@dataclass
class OptimizeResult:
    w: Tensor  # (1, n_latent, w_dim) optimised latent, detached
    image: Tensor  # (1, 3, H, W) G(w), detached
    losses: list[float]  # total loss per step


@dataclass
class EditResult:
    w: Tensor  # (1, n_latent, w_dim) edited latent
    image: Tensor  # (1, 3, H, W) edited image in [-1, 1]
    source_image: Tensor  # (1, 3, H, W) G(w_s)
    report: dict[str, Any]  # quality report, JSON-ready (see ``edit``)


StepCallback = Callable[[StepInfo], None]
CancelCheck = Callable[[], bool]


def optimize_latent(
    generator: Generator,
    clip: FrozenClip,
    target: Tensor,
    w_source: Tensor,
    config: EditConfig,
    *,
    weights: Sequence[float] | None = None,
    identity: IdentityLoss | None = None,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
    phase: str = "joint",
    phase_index: int = 0,
    phases: int = 1,
) -> OptimizeResult:
    """Optimise a copy of ``w_source`` towards CLIP embedding(s) ``target`` (Eq. 2).

    ``target`` is (D,), (1, D) or (K, D); with K targets the CLIP term is the ``weights``-weighted
    sum of their losses (default all 1). The identity network runs only when ``identity`` is given
    and ``config.lambda_id > 0``; its source features are computed once. Raises ``EditCanceled``
    when ``should_cancel()`` turns True (checked before every step).
    """
    n_latent, w_dim = generator.n_latent, generator.w_dim
    if tuple(w_source.shape) != (1, n_latent, w_dim):
        raise ValueError(
            f"w_source must be (1, {n_latent}, {w_dim}) for this generator, "
            f"got {tuple(w_source.shape)}"
        )
    targets = target.reshape(1, -1) if target.ndim == 1 else target  # (K, D)
    if targets.ndim != 2 or targets.shape[1] != clip.embed_dim:
        raise ValueError(
            f"target must be (D,), (1, D) or (K, D) with D = {clip.embed_dim}, "
            f"got {tuple(target.shape)}"
        )
    target_weights = [1.0] * targets.shape[0] if weights is None else [float(x) for x in weights]
    if len(target_weights) != targets.shape[0]:
        raise ValueError(f"{len(target_weights)} weights for {targets.shape[0]} targets")
    use_identity = identity is not None and config.lambda_id > 0
    for network in (generator, clip, identity):
        if isinstance(network, nn.Module):
            freeze(network)

    w_s = w_source.detach().float()  # (1, n_latent, w_dim)
    targets = targets.detach().to(device=w_s.device, dtype=torch.float32)
    w = w_s.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=config.lr)
    losses: list[float] = []

    with torch.enable_grad():
        source_feats: Tensor | None = None
        if use_identity:
            assert identity is not None
            with torch.no_grad():
                source_image = generator.synthesis(w_s, noise_mode=config.noise_mode)
                source_feats = identity.features(source_image)  # (1, 512)

        for step in range(config.steps):
            if should_cancel is not None and should_cancel():
                raise EditCanceled(step, phase)
            lr = lr_schedule(step / config.steps, config.lr, config.lr_rampdown, config.lr_rampup)
            for group in optimizer.param_groups:
                group["lr"] = lr

            image = generator.synthesis(w, noise_mode=config.noise_mode)  # (1, 3, H, W)
            emb = clip.encode_image(image, config.clip_preprocess)  # (1, D)
            clip_term = torch.zeros((), device=w.device)
            for k, weight in enumerate(target_weights):
                clip_term = (
                    clip_term + weight * clip_loss(emb, targets[k], config.clip_loss_mode).mean()
                )
            l2_term = ((w_s - w) ** 2).sum()
            loss = clip_term + config.lambda_l2 * l2_term
            id_value: float | None = None
            if use_identity:
                assert identity is not None and source_feats is not None
                id_term = identity.loss_from_features(image, source_feats).mean()
                loss = loss + config.lambda_id * id_term
                id_value = float(id_term.detach())

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            losses.append(float(loss.detach()))
            if on_step is not None:
                last = step == config.steps - 1
                every = config.preview_every
                on_step(
                    StepInfo(
                        phase=phase,
                        phase_index=phase_index,
                        phases=phases,
                        step=step,
                        steps=config.steps,
                        lr=lr,
                        loss=losses[-1],
                        clip=float(clip_term.detach()),
                        l2=float(l2_term.detach()),
                        identity=id_value,
                        image=image.detach(),
                        preview=last or (every > 0 and step % every == 0),
                    )
                )

    w_final = w.detach()
    with torch.no_grad():
        image_final = generator.synthesis(w_final, noise_mode=config.noise_mode)
    return OptimizeResult(w=w_final, image=image_final, losses=losses)


def mix_latents(w_audio: Tensor, w_text: Tensor, split: int) -> Tensor:
    """W+ layers [0, split) from ``w_audio`` and [split, n) from ``w_text``: (1, n, w_dim)."""
    if w_audio.shape != w_text.shape:
        raise ValueError(f"latent shapes differ: {tuple(w_audio.shape)} vs {tuple(w_text.shape)}")
    if not 0 < split < w_audio.shape[1]:
        raise ValueError(f"split {split} outside (0, {w_audio.shape[1]})")
    return torch.cat([w_audio[:, :split], w_text[:, split:]], dim=1)


def edit(
    generator: Generator,
    clip: FrozenClip,
    audio_emb: Tensor,
    w_source: Tensor,
    config: EditConfig,
    *,
    text_emb: Tensor | None = None,
    identity: IdentityLoss | None = None,
    on_step: StepCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> EditResult:
    """A sound-guided edit of ``w_source``, optionally joint with a text embedding.

    With ``text_emb`` and ``config.text_mode == "mix"``, a sound-guided and a text-guided run
    start from ``w_source`` and their W+ layers are mixed at ``config.layer_split``; with "sum",
    one run minimises ``L_CLIP(audio) + text_weight · L_CLIP(text)``.

    The report holds: ``clip_audio_before/after`` (cosine of image and audio embeddings),
    ``clip_text_before/after`` (with text), ``latent_l2`` (||w - w_s||, not squared),
    ``identity_similarity`` (ArcFace cosine of source and result, when ``identity`` is given),
    ``steps`` (run in total), ``runs``, ``text_mode``, ``mix_layer_split`` and ``seconds``.
    """
    started = time.perf_counter()
    n_latent = generator.n_latent
    audio = _as_row(audio_emb, "audio_emb")  # (1, D)
    text = None if text_emb is None else _as_row(text_emb, "text_emb")  # (1, D)
    mixing = text is not None and config.text_mode == "mix"
    split = config.layer_split(n_latent) if mixing else None
    common: dict[str, Any] = {
        "identity": identity,
        "on_step": on_step,
        "should_cancel": should_cancel,
    }

    if text is None:
        result = optimize_latent(generator, clip, audio, w_source, config, **common)
        w, image, runs = result.w, result.image, 1
    elif mixing:
        assert split is not None
        by_audio = optimize_latent(
            generator, clip, audio, w_source, config, phase="audio", phases=2, **common
        )
        by_text = optimize_latent(
            generator, clip, text, w_source, config, phase="text", phase_index=1, phases=2, **common
        )
        w, runs = mix_latents(by_audio.w, by_text.w, split), 2
        with torch.no_grad():
            image = generator.synthesis(w, noise_mode=config.noise_mode)
    else:
        both = torch.cat([audio, text], dim=0)  # (2, D)
        result = optimize_latent(
            generator, clip, both, w_source, config, weights=(1.0, config.text_weight), **common
        )
        w, image, runs = result.w, result.image, 1

    with torch.no_grad():
        w_s = w_source.detach().float()
        source_image = generator.synthesis(w_s, noise_mode=config.noise_mode)
        report: dict[str, Any] = {}
        emb_before = clip.encode_image(source_image, config.clip_preprocess)
        emb_after = clip.encode_image(image, config.clip_preprocess)
        report["clip_audio_before"] = _cosine(emb_before, audio)
        report["clip_audio_after"] = _cosine(emb_after, audio)
        if text is not None:
            report["clip_text_before"] = _cosine(emb_before, text)
            report["clip_text_after"] = _cosine(emb_after, text)
        report["latent_l2"] = float(torch.linalg.vector_norm(w - w_s))
        if identity is not None:
            report["identity_similarity"] = float(identity.similarity(source_image, image)[0])
    report["steps"] = config.steps * runs
    report["runs"] = runs
    report["text_mode"] = config.text_mode if text is not None else None
    report["mix_layer_split"] = split
    report["seconds"] = time.perf_counter() - started
    return EditResult(w=w, image=image, source_image=source_image, report=report)


@torch.no_grad()
def start_from_seed(
    generator: Generator, seed: int, truncation: float = DEFAULT_TRUNCATION
) -> Tensor:
    """A random start as the official code makes it: one truncated w on every layer.

    z is drawn on the CPU from its own ``torch.Generator``, so the start depends only on
    ``seed`` (not on the global RNG or the device). Returns (1, n_latent, w_dim).
    """
    rng = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(1, generator.z_dim, generator=rng)  # (1, z_dim)
    device = _device_of(generator)
    w = generator.mapping(z.to(device), truncation=truncation)  # (1, w_dim)
    return w.unsqueeze(1).repeat(1, generator.n_latent, 1).detach()


def _device_of(generator: Generator) -> torch.device:
    if isinstance(generator, nn.Module):
        for param in generator.parameters():
            return param.device
        for buffer in generator.buffers():
            return buffer.device
    return torch.device("cpu")


def _as_row(emb: Tensor, name: str) -> Tensor:
    """(D,) or (1, D) -> (1, D) float32."""
    row = emb.reshape(1, -1) if emb.ndim == 1 else emb
    if row.ndim != 2 or row.shape[0] != 1:
        raise ValueError(f"{name} must be (D,) or (1, D), got {tuple(emb.shape)}")
    return row.detach().float()


def _cosine(a: Tensor, b: Tensor) -> float:
    """Cosine of two (1, D) embeddings as a float."""
    return float(1 - clip_loss(a, b.to(a.device), "cosine")[0])
