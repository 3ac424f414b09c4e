"""Sound-guided latent optimisation (the paper's Eq. 2) and joint audio + text edits.

    w* = argmin_w  L_CLIP(G(w), a) + λ_L2 ||w - w_s||² + λ_ID L_ID(G(w), G(w_s))

Adam on a copy of the W+ latent, learning rate from a cosine ramp-down / linear ramp-up
schedule, generator / CLIP / identity networks frozen. Deterministic on CPU for equal inputs.

Several edits on one generator and one ``EditConfig`` can run as one batch
(``optimize_latents``, ``edit_batch``): the batched loss is the sum of the per-edit losses, so
each edit's latent receives exactly its own gradient, and Adam, being elementwise, gives each
edit the update it would get alone (up to float rounding of the batched convolutions). An edit
canceled mid-batch leaves the batch; the others go on as if it had never been there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
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
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
# torch.compile modes; "reduce-overhead" adds CUDA graphs on a GPU.
COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
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
    # "bf16" / "fp16": forward passes under autocast (the latent and Adam stay fp32; fp16 adds
    # loss scaling). Meant for GPUs; a CPU without bf16 units runs bf16 slower than fp32.
    precision: Precision = "fp32"
    compile_mode: str | None = None  # torch.compile the generator with this mode; None: eager

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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode must be None or one of {list(COMPILE_MODES)}, "
                f"got {self.compile_mode!r}"
            )

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
    edit_index: int = 0  # which edit of a batched run (0 for a single edit)

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
EditCancelCheck = Callable[[int], bool]  # of a batch: is edit ``edit_index`` to stop?


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
    _check_single(generator, w_source)
    (result,) = optimize_latents(
        generator,
        clip,
        [target],
        w_source,
        config,
        weights=None if weights is None else [weights],
        identity=identity,
        on_step=on_step,
        should_cancel=_for_batch(should_cancel),
        phase=phase,
        phase_index=phase_index,
        phases=phases,
    )
    if isinstance(result, EditCanceled):
        raise result
    return result


def optimize_latents(
    generator: Generator,
    clip: FrozenClip,
    targets: Sequence[Tensor] | Tensor,
    w_sources: Tensor,
    config: EditConfig,
    *,
    weights: Sequence[Sequence[float]] | None = None,
    identity: IdentityLoss | None = None,
    on_step: StepCallback | None = None,
    should_cancel: EditCancelCheck | None = None,
    phase: str = "joint",
    phase_index: int = 0,
    phases: int = 1,
) -> list[OptimizeResult | EditCanceled]:
    """Optimise B edits of one generator as one batch; the per-edit outcomes, in order.

    ``w_sources`` is (B, n_latent, w_dim); ``targets`` holds one entry per edit, each (D,),
    (1, D) or (K_b, D) as in ``optimize_latent`` (a (B, D) tensor gives one target per edit);
    ``weights`` one list per edit. The loss minimised is the SUM over edits of each edit's
    Eq. 2 loss (its CLIP term, its own ||w_b - w_s,b||², its identity term), so each latent gets
    its own gradient and Adam's elementwise update equals the unbatched one. ``on_step`` is
    called once per edit per step (``StepInfo.edit_index``). ``should_cancel(b)`` is asked
    before every step for each edit still running; an edit it stops leaves the batch and its
    outcome is ``EditCanceled``. Equivalence assumes deterministic noise ("const" or "none").
    """
    optimizer = LatentOptimizer(
        generator, clip, targets, w_sources, config, weights=weights, identity=identity
    )
    outcomes: list[OptimizeResult | EditCanceled | None] = [None] * optimizer.batch
    for step in range(config.steps):
        if should_cancel is not None:
            stopped = [b for b in optimizer.edits if should_cancel(b)]
            for b in stopped:
                outcomes[b] = EditCanceled(step, phase)
            optimizer.drop(stopped)
        if optimizer.batch == 0:
            break
        values = optimizer.step()
        if on_step is not None:
            last = step == config.steps - 1
            every = config.preview_every
            frames = values.images.float()
            for row, b in enumerate(optimizer.edits):
                on_step(
                    StepInfo(
                        phase=phase,
                        phase_index=phase_index,
                        phases=phases,
                        step=step,
                        steps=config.steps,
                        lr=values.lr,
                        loss=values.loss[row],
                        clip=values.clip[row],
                        l2=values.l2[row],
                        identity=None if values.identity is None else values.identity[row],
                        image=frames[row : row + 1],
                        preview=last or (every > 0 and step % every == 0),
                        edit_index=b,
                    )
                )
    if optimizer.batch:
        for b, result in zip(optimizer.edits, optimizer.results(), strict=True):
            outcomes[b] = result
    return [outcome for outcome in outcomes if outcome is not None]


@dataclass(frozen=True)
class StepValues:
    """What one batched step reports, one entry per edit."""

    lr: float
    loss: list[float]  # total Eq. 2 loss
    clip: list[float]  # weighted CLIP term
    l2: list[float]  # ||w - w_s||², before its weight
    identity: list[float] | None  # identity loss before its weight; None when not evaluated
    images: Tensor  # (B, 3, H, W) G(w) before this step's update, detached


class LatentOptimizer:
    """The Eq. 2 optimisation of B latents, one ``step()`` at a time.

    ``optimize_latents`` drives it; benchmarks and callers that interleave work between steps
    (e.g. to admit or preempt edits) can drive it themselves. Networks are frozen on entry.
    Rows are edits; ``drop`` removes some, and ``edits`` maps the rows left to edit indices.
    """

    def __init__(
        self,
        generator: Generator,
        clip: FrozenClip,
        targets: Sequence[Tensor] | Tensor,
        w_sources: Tensor,
        config: EditConfig,
        *,
        weights: Sequence[Sequence[float]] | None = None,
        identity: IdentityLoss | None = None,
    ) -> None:
        _check_batch(generator, w_sources)
        self.generator, self.clip, self.config = generator, clip, config
        self.edits = list(range(w_sources.shape[0]))  # the edit index of each row still running
        # float32 unless the caller runs the networks in float64 (exactness checks)
        dtype = torch.float64 if w_sources.dtype == torch.float64 else torch.float32
        self.w_s = w_sources.detach().to(dtype)  # (B, n_latent, w_dim)
        self.targets, self.weights = _target_table(
            targets, weights, self.batch, clip.embed_dim, self.w_s.device
        )  # (B, K, D), (B, K)
        for network in (generator, clip, identity):
            if isinstance(network, nn.Module):
                freeze(network)
        self.identity = identity if identity is not None and config.lambda_id > 0 else None
        self.synthesize = _synthesis_fn(generator, config.compile_mode)
        self.w = self.w_s.clone().requires_grad_(True)
        self.adam = torch.optim.Adam([self.w], lr=config.lr)
        self.scaler = torch.amp.GradScaler(self.w.device.type, enabled=config.precision == "fp16")
        self.steps_done = 0
        self.losses: list[list[float]] = [[] for _ in range(self.batch)]
        self.source_feats: Tensor | None = None
        if self.identity is not None:
            with torch.no_grad(), _autocast(self.w.device, config.precision):
                source_image = self.synthesize(self.w_s, noise_mode=config.noise_mode)
                self.source_feats = self.identity.features(source_image).float()  # (B, 512)

    def step(self) -> StepValues:
        """One Adam step on every latent; the values of the loss before the update."""
        config, batch = self.config, self.batch
        lr = lr_schedule(
            self.steps_done / config.steps, config.lr, config.lr_rampdown, config.lr_rampup
        )
        for group in self.adam.param_groups:
            group["lr"] = lr
        w = self.w
        with torch.enable_grad(), _autocast(w.device, config.precision):
            image = self.synthesize(w, noise_mode=config.noise_mode)  # (B, 3, H, W)
            emb = self.clip.encode_image(image, config.clip_preprocess)  # (B, D)
            clip_term = torch.zeros(batch, device=w.device)  # (B,)
            for k in range(self.targets.shape[1]):
                per_target = clip_loss(emb, self.targets[:, k], config.clip_loss_mode)
                clip_term = clip_term + self.weights[:, k] * per_target
            l2_term = ((self.w_s - w) ** 2).sum(dim=(1, 2))  # (B,) plain sums of squares
            loss = clip_term + config.lambda_l2 * l2_term  # (B,)
            id_term: Tensor | None = None
            if self.identity is not None:
                assert self.source_feats is not None
                id_term = self.identity.loss_from_features(image, self.source_feats).float()
                loss = loss + config.lambda_id * id_term
        self.adam.zero_grad(set_to_none=True)
        with torch.enable_grad():
            self.scaler.scale(loss.sum()).backward()  # the sum: each edit keeps its gradient
        self.scaler.step(self.adam)
        self.scaler.update()
        self.steps_done += 1

        # One device-to-host copy per step for every reported number.
        parts = [loss, clip_term, l2_term] + ([id_term] if id_term is not None else [])
        values = torch.stack([t.detach().float() for t in parts]).tolist()
        for b in range(batch):
            self.losses[b].append(values[0][b])
        return StepValues(
            lr=lr,
            loss=values[0],
            clip=values[1],
            l2=values[2],
            identity=values[3] if id_term is not None else None,
            images=image.detach(),
        )

    @property
    def batch(self) -> int:
        """Edits still being optimised."""
        return len(self.edits)

    def drop(self, edits: Sequence[int]) -> None:
        """Stop optimising ``edits`` (edit indices); the other rows keep their Adam state."""
        keep = [row for row, b in enumerate(self.edits) if b not in edits]
        if len(keep) == len(self.edits):
            return
        rows = torch.tensor(keep, dtype=torch.long, device=self.w.device)
        state = self.adam.state.get(self.w, {})  # empty before the first step
        self.w = self.w.detach()[rows].requires_grad_(True)
        self.adam = torch.optim.Adam([self.w], lr=self.config.lr)
        if state:  # moments are (B, n_latent, w_dim) like w; "step" is a shared scalar
            self.adam.state[self.w] = {
                name: value[rows] if value.ndim == self.w.ndim else value.clone()
                for name, value in state.items()
            }
        self.w_s = self.w_s[rows]
        self.targets, self.weights = self.targets[rows], self.weights[rows]
        if self.source_feats is not None:
            self.source_feats = self.source_feats[rows]
        self.edits = [self.edits[row] for row in keep]
        self.losses = [self.losses[row] for row in keep]

    def results(self) -> list[OptimizeResult]:
        """The latents as they are now and their images (rendered in fp32), per row."""
        w_final = self.w.detach()
        with torch.no_grad():
            images = self.generator.synthesis(w_final, noise_mode=self.config.noise_mode)
        return [
            OptimizeResult(
                w=w_final[b : b + 1].clone(),
                image=images[b : b + 1].clone(),
                losses=list(self.losses[b]),
            )
            for b in range(self.batch)
        ]


def _target_table(
    targets: Sequence[Tensor] | Tensor,
    weights: Sequence[Sequence[float]] | None,
    batch: int,
    embed_dim: int,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Per-edit targets padded to one table: (B, K, D) embeddings and (B, K) weights.

    Padding rows are zero embeddings with weight 0, so they add nothing to any edit's loss.
    """
    rows = [t.reshape(1, -1) if t.ndim == 1 else t for t in targets]
    if len(rows) != batch:
        raise ValueError(f"{len(rows)} targets for {batch} edits")
    for t in rows:
        if t.ndim != 2 or t.shape[1] != embed_dim or t.shape[0] < 1:
            raise ValueError(
                f"each target must be (D,), (1, D) or (K, D) with D = {embed_dim}, "
                f"got {tuple(t.shape)}"
            )
    if weights is None:
        weights = [[1.0] * t.shape[0] for t in rows]
    if len(weights) != batch:
        raise ValueError(f"{len(weights)} weight lists for {batch} edits")
    k_max = max(t.shape[0] for t in rows)
    table = torch.zeros(batch, k_max, embed_dim, device=device)
    weight_table = torch.zeros(batch, k_max, device=device)
    for b, (t, ws) in enumerate(zip(rows, weights, strict=True)):
        if len(ws) != t.shape[0]:
            raise ValueError(f"{len(ws)} weights for {t.shape[0]} targets (edit {b})")
        table[b, : t.shape[0]] = t.detach().to(device=device, dtype=torch.float32)
        weight_table[b, : t.shape[0]] = torch.tensor([float(x) for x in ws], device=device)
    return table, weight_table


@contextlib.contextmanager
def _autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Autocast for "bf16" / "fp16"; nothing for "fp32"."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision]):
        yield


SynthesisFn = Callable[..., Tensor]
# Compiled generators, so that every edit after the first reuses the compiled graph.
_COMPILED: weakref.WeakKeyDictionary[nn.Module, dict[str, SynthesisFn]] = (
    weakref.WeakKeyDictionary()
)


def _synthesis_fn(generator: Generator, compile_mode: str | None) -> SynthesisFn:
    """``generator.synthesis``, or a ``torch.compile``d forward kept for reuse."""
    if compile_mode is None or not isinstance(generator, nn.Module):
        return generator.synthesis
    by_mode = _COMPILED.setdefault(generator, {})
    if compile_mode not in by_mode:
        by_mode[compile_mode] = torch.compile(generator, mode=compile_mode)
    return by_mode[compile_mode]


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
    Raises ``EditCanceled`` when ``should_cancel()`` turns True.
    """
    _check_single(generator, w_source)
    (result,) = edit_batch(
        generator,
        clip,
        _as_rows(audio_emb, 1, "audio_emb"),
        w_source,
        config,
        text_embs=None if text_emb is None else _as_rows(text_emb, 1, "text_emb"),
        identity=identity,
        on_step=on_step,
        should_cancel=_for_batch(should_cancel),
    )
    if isinstance(result, EditCanceled):
        raise result
    return result


def edit_batch(
    generator: Generator,
    clip: FrozenClip,
    audio_embs: Tensor,
    w_sources: Tensor,
    config: EditConfig,
    *,
    text_embs: Tensor | None = None,
    identity: IdentityLoss | None = None,
    on_step: StepCallback | None = None,
    should_cancel: EditCancelCheck | None = None,
) -> list[EditResult | EditCanceled]:
    """B compatible edits as one batch: ``edit`` for each row, outcomes in order.

    ``audio_embs`` (B, D), ``w_sources`` (B, n_latent, w_dim), ``text_embs`` None or (B, D):
    compatible edits share the generator, ``config`` and whether text joins the sound. Each
    result equals the unbatched ``edit`` up to float rounding (see ``optimize_latents``);
    ``on_step`` receives every edit's steps (``StepInfo.edit_index``) and the report's
    ``seconds`` is the whole batch's wall time. An edit that ``should_cancel(b)`` stops leaves
    the batch (a "mix" edit stopped in its sound run skips its text run) as ``EditCanceled``.
    """
    started = time.perf_counter()
    _check_batch(generator, w_sources)
    batch = w_sources.shape[0]
    audio = _as_rows(audio_embs, batch, "audio_embs")  # (B, D)
    text = None if text_embs is None else _as_rows(text_embs, batch, "text_embs")  # (B, D)
    mixing = text is not None and config.text_mode == "mix"
    split = config.layer_split(generator.n_latent) if mixing else None
    outcomes: list[EditResult | EditCanceled | None] = [None] * batch

    def run(
        edits: list[int],
        targets: Tensor,
        weights: list[tuple[float, ...]] | None = None,
        **phase: Any,
    ) -> dict[int, Tensor]:
        """One optimisation of ``edits``: the final (1, n_latent, w_dim) latent of each edit
        not canceled, by edit index; the canceled ones' outcomes are recorded."""
        if not edits:  # every edit was canceled in the sound run
            return {}

        def report_step(info: StepInfo) -> None:
            assert on_step is not None
            on_step(dataclasses.replace(info, edit_index=edits[info.edit_index]))

        results = optimize_latents(
            generator,
            clip,
            targets[edits],
            w_sources[edits],
            config,
            weights=None if weights is None else [weights[b] for b in edits],
            identity=identity,
            on_step=None if on_step is None else report_step,
            should_cancel=None if should_cancel is None else lambda row: should_cancel(edits[row]),
            **phase,
        )
        latents = {}
        for b, result in zip(edits, results, strict=True):
            if isinstance(result, EditCanceled):
                outcomes[b] = result
            else:
                latents[b] = result.w
        return latents

    everyone = list(range(batch))
    if text is None:
        latents = run(everyone, audio)
    elif mixing:
        assert split is not None
        by_audio = run(everyone, audio, phase="audio", phases=2)
        by_text = run(list(by_audio), text, phase="text", phase_index=1, phases=2)
        latents = {b: mix_latents(by_audio[b], w, split) for b, w in by_text.items()}
    else:
        both = torch.stack([audio, text], dim=1)  # (B, 2, D): sound and text targets
        latents = run(everyone, both, weights=[(1.0, config.text_weight)] * batch)

    finished = sorted(latents)
    if finished:
        w = torch.cat([latents[b] for b in finished])  # (F, n_latent, w_dim)
        with torch.no_grad():
            w_s = w_sources[finished].detach().to(w.dtype)
            image = generator.synthesis(w, noise_mode=config.noise_mode)  # fp32, (F, 3, H, W)
            source_image = generator.synthesis(w_s, noise_mode=config.noise_mode)
            emb_before = clip.encode_image(source_image, config.clip_preprocess)
            emb_after = clip.encode_image(image, config.clip_preprocess)
            audio_before = _cosines(emb_before, audio[finished])
            audio_after = _cosines(emb_after, audio[finished])
            text_before = None if text is None else _cosines(emb_before, text[finished])
            text_after = None if text is None else _cosines(emb_after, text[finished])
            distance = torch.linalg.vector_norm((w - w_s).flatten(1), dim=1).tolist()
            identity_sim = None if identity is None else identity.similarity(source_image, image)
        seconds = time.perf_counter() - started
        for row, b in enumerate(finished):
            report: dict[str, Any] = {
                "clip_audio_before": audio_before[row],
                "clip_audio_after": audio_after[row],
            }
            if text_before is not None and text_after is not None:
                report["clip_text_before"] = text_before[row]
                report["clip_text_after"] = text_after[row]
            report["latent_l2"] = distance[row]
            if identity_sim is not None:
                report["identity_similarity"] = float(identity_sim[row])
            report["steps"] = config.steps * (2 if mixing else 1)
            report["runs"] = 2 if mixing else 1
            report["text_mode"] = config.text_mode if text is not None else None
            report["mix_layer_split"] = split
            report["seconds"] = seconds
            outcomes[b] = EditResult(
                w=w[row : row + 1],
                image=image[row : row + 1],
                source_image=source_image[row : row + 1],
                report=report,
            )
    return [outcome for outcome in outcomes if outcome is not None]


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


def _as_rows(embs: Tensor, batch: int, name: str) -> Tensor:
    """(B, D) float32 (a (D,) vector is one row)."""
    rows = embs.reshape(1, -1) if embs.ndim == 1 else embs
    if rows.ndim != 2 or rows.shape[0] != batch:
        raise ValueError(f"{name} must be ({batch}, D), got {tuple(embs.shape)}")
    return rows.detach().float()


def _check_batch(generator: Generator, w_sources: Tensor) -> None:
    n_latent, w_dim = generator.n_latent, generator.w_dim
    if w_sources.ndim != 3 or tuple(w_sources.shape[1:]) != (n_latent, w_dim):
        raise ValueError(
            f"w_sources must be (B, {n_latent}, {w_dim}) for this generator, "
            f"got {tuple(w_sources.shape)}"
        )


def _check_single(generator: Generator, w_source: Tensor) -> None:
    n_latent, w_dim = generator.n_latent, generator.w_dim
    if tuple(w_source.shape) != (1, n_latent, w_dim):
        raise ValueError(
            f"w_source must be (1, {n_latent}, {w_dim}) for this generator, "
            f"got {tuple(w_source.shape)}"
        )


def _for_batch(should_cancel: CancelCheck | None) -> EditCancelCheck | None:
    """A single edit's cancel check, asked as the check of a batch of one."""
    if should_cancel is None:
        return None
    return lambda _edit_index: should_cancel()


def _cosines(a: Tensor, b: Tensor) -> list[float]:
    """Row-wise cosines of two (B, D) embeddings."""
    return (1 - clip_loss(a, b.to(a.device), "cosine")).tolist()
