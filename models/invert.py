"""Projection of an aligned photo into a StyleGAN2's W+ space, by optimisation.

Start from ``w_avg`` on every layer; Adam on the W+ latent (n_latent × w_dim) with the same
ramped learning rate as the edit optimiser; the generator's noise stays fixed ("const", its
stored maps), so the latent alone carries the image and later edits reproduce it exactly.

    loss = λ_mse · MSE(G(w), x) + λ_perc · P(G(w), x) [+ λ_id · (1 − cos(id(G(w)), id(x)))]

``P`` is LPIPS-VGG when its weights are given (``models.perceptual.load_lpips``), otherwise
the weight-free ``StructureLoss``; both see images area-averaged to at most ``loss_size`` px
(rosinality's projector compares at 256 px too). The identity term is the face domain's
optional extra (pSp's weights: 1, 0.8, 0.1). Deterministic on the CPU for equal inputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.frozen import freeze
from models.identity import IdentityLoss
from models.optimize import EditCanceled, Generator, lr_schedule
from models.perceptual import StructureLoss, downsample_to, psnr, ssim

logger = logging.getLogger(__name__)

PHASE = "inverting"  # the phase name in progress reports and EditCanceled
NOISE_MODES = ("const", "none")  # "random" would make the latent reproduce nothing


@dataclass
class InvertConfig:
    """Settings of one inversion."""

    steps: int = 500  # Adam steps
    lr: float = 0.02  # peak learning rate (W+ drifts off the W manifold when it is large)
    lambda_mse: float = 1.0  # pixel MSE on [-1, 1] images
    lambda_perceptual: float = 0.8  # LPIPS or the structure loss
    lambda_id: float = 0.1  # identity term (only with an identity network)
    loss_size: int = 256  # px; perceptual and identity terms see at most this size
    noise_mode: str = "const"  # the generator's stored noise maps
    lr_rampdown: float = 0.25  # fraction of steps of the cosine ramp-down
    lr_rampup: float = 0.05  # fraction of steps of the linear ramp-up
    preview_every: int = 20  # InvertStep.preview every this many steps; 0: only the last

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr}")
        for name in ("lambda_mse", "lambda_perceptual", "lambda_id"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")
        if self.loss_size < 16:
            raise ValueError(f"loss_size must be >= 16, got {self.loss_size}")
        if self.noise_mode not in NOISE_MODES:
            raise ValueError(
                f"noise_mode must be one of {list(NOISE_MODES)}, got {self.noise_mode!r}"
            )
        if self.preview_every < 0:
            raise ValueError(f"preview_every must be >= 0, got {self.preview_every}")


@dataclass(frozen=True)
class InvertStep:
    """Progress of one inversion step, passed to ``on_step``."""

    step: int  # 0-based
    steps: int
    lr: float
    loss: float  # total loss of this step
    mse: float
    perceptual: float
    identity: float | None  # None without an identity network
    image: Tensor = field(repr=False)  # (1, 3, H, W) G(w) before this step's update
    preview: bool = False  # every ``preview_every`` steps and on the last
    phase: str = PHASE

    @property
    def progress(self) -> float:
        """Fraction of the inversion done after this step, in (0, 1]."""
        return (self.step + 1) / self.steps


@dataclass
class InversionResult:
    latent: Tensor  # (1, n_latent, w_dim), detached
    image: Tensor  # (1, 3, H, W) G(latent), detached, in about [-1, 1]
    psnr: float  # dB, of the reconstruction against the target on [0, 1]
    ssim: float  # mean SSIM, same scale
    losses: list[float]  # total loss per step
    seconds: float


InvertCallback = Callable[[InvertStep], None]
CancelCheck = Callable[[], bool]


def invert(
    generator: Generator,
    target: Tensor,
    config: InvertConfig | None = None,
    *,
    perceptual: nn.Module | None = None,
    identity: IdentityLoss | None = None,
    on_step: InvertCallback | None = None,
    should_cancel: CancelCheck | None = None,
) -> InversionResult:
    """Find a W+ latent whose image matches ``target`` (1, 3, H, W) in [-1, 1].

    ``perceptual`` is a module (x, y) -> (B,) such as ``LPIPS``; None uses ``StructureLoss``.
    ``identity`` adds the identity term (faces). ``should_cancel`` is checked before every
    step and raises ``EditCanceled`` (phase "inverting").
    """
    config = config if config is not None else InvertConfig()
    started = time.perf_counter()
    n_latent, w_dim = generator.n_latent, generator.w_dim
    w_avg: Tensor = generator.w_avg  # type: ignore[attr-defined]
    if target.ndim != 4 or target.shape[:2] != (1, 3):
        raise ValueError(f"target must be (1, 3, H, W), got {tuple(target.shape)}")
    perceptual = perceptual if perceptual is not None else StructureLoss()
    for network in (generator, perceptual, identity):
        if isinstance(network, nn.Module):
            freeze(network)

    target = target.detach().to(device=w_avg.device, dtype=torch.float32)
    small_target = downsample_to(target, config.loss_size)
    w = w_avg.detach().float().view(1, 1, w_dim).repeat(1, n_latent, 1).requires_grad_(True)
    optimizer = torch.optim.Adam([w], lr=config.lr)
    losses: list[float] = []
    id_feats: Tensor | None = None
    use_identity = identity is not None and config.lambda_id > 0
    if use_identity:
        assert identity is not None
        with torch.no_grad():
            id_feats = identity.features(small_target)  # (1, D)

    with torch.enable_grad():
        for step in range(config.steps):
            if should_cancel is not None and should_cancel():
                raise EditCanceled(step, PHASE)
            lr = lr_schedule(step / config.steps, config.lr, config.lr_rampdown, config.lr_rampup)
            for group in optimizer.param_groups:
                group["lr"] = lr

            image = generator.synthesis(w, noise_mode=config.noise_mode)  # (1, 3, H, W)
            mse = (image - target).pow(2).mean()
            small = downsample_to(image, config.loss_size)
            perc = perceptual(small, small_target).mean()
            loss = config.lambda_mse * mse + config.lambda_perceptual * perc
            id_value: float | None = None
            if use_identity:
                assert identity is not None and id_feats is not None
                id_term = identity.loss_from_features(small, id_feats).mean()
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
                    InvertStep(
                        step=step,
                        steps=config.steps,
                        lr=lr,
                        loss=losses[-1],
                        mse=float(mse.detach()),
                        perceptual=float(perc.detach()),
                        identity=id_value,
                        image=image.detach(),
                        preview=last or (every > 0 and step % every == 0),
                    )
                )

    latent = w.detach()
    with torch.no_grad():
        final = generator.synthesis(latent, noise_mode=config.noise_mode)
        quality = (float(psnr(final, target)[0]), float(ssim(final, target)[0]))
    seconds = time.perf_counter() - started
    logger.info(
        "inverted in %d steps (%.1f s): PSNR %.2f dB, SSIM %.3f",
        config.steps,
        seconds,
        *quality,
    )
    return InversionResult(
        latent=latent,
        image=final,
        psnr=quality[0],
        ssim=quality[1],
        losses=losses,
        seconds=seconds,
    )
