"""The official implementation's optimisation step, rebuilt for timing on the same weights.

This reproduces what the paper's code (a StyleCLIP fork on rosinality's StyleGAN2) computes per
step on a CPU, written from its description:

- generator: per-sample modulated weights as grouped convolutions, stride-2 transposed conv
  then the blur; every FIR filter runs through rosinality's "native" path, which folds every
  channel into the batch and filters them as single-channel images; bias + leaky ReLU + gain as
  separate ops (its CPU fallback);
- CLIP input: nearest-neighbour upsample x7, average pool by size // 32, no normalisation;
  loss ``1 - cos * exp(0.07)``;
- the audio encoder runs inside the loss every step (its embedding is never cached);
- the identity network embeds both the source and the edited image every step, whatever λ_ID;
- no network is frozen: autograd computes gradients for every weight of all four networks;
- ``loss.backward(retain_graph=True)``, so each step's graph outlives it.

It walks the modules of a ``models.stylegan2.Generator`` (same parameter names as rosinality),
so both paths run on identical weights.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.audio_encoder import AudioEncoder
from models.clip import FrozenClip
from models.identity import IdentityLoss
from models.optimize import lr_schedule
from models.stylegan2 import (
    LRELU_GAIN,
    LRELU_SLOPE,
    Generator,
    ModulatedConv2d,
    StyledConv,
    ToRGB,
    Upsample,
)

UPSTREAM_UPSAMPLE = 7  # nearest-neighbour factor before the average pool
UPSTREAM_POOL_DIVISOR = 32  # pool kernel = stylegan_size // 32
UPSTREAM_COS_SCALE = math.exp(0.07)
ID_POOL = 256  # identity input: pool to 256, crop the face box, pool to 112
ID_CROP = (35, 223, 32, 220)
ID_INPUT = 112
DEMOD_EPS = 1e-8


def native_upfirdn2d(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """rosinality's CPU upfirdn2d: each channel becomes one single-channel image of the batch.

    [B, C, H, W] -> [B, C, H*up + p0 + p1 - K + 1, ...]; zero-stuffing in NHWC with a trailing
    singleton channel, pad / crop, then one 1-channel conv over B*C images.
    """
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    out = x.reshape(b * c, h, w, 1)  # every channel into the batch
    out = out.view(-1, h, 1, w, 1, 1)
    out = F.pad(out, [0, 0, 0, up - 1, 0, 0, 0, up - 1])
    out = out.view(-1, h * up, w * up, 1)
    p0, p1 = pad
    out = F.pad(out, [0, 0, max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    out = out[:, max(-p0, 0) : out.shape[1] - max(-p1, 0), max(-p0, 0) : out.shape[2] - max(-p1, 0)]
    out = out.permute(0, 3, 1, 2).reshape(-1, 1, h * up + p0 + p1, w * up + p0 + p1)
    out = F.conv2d(out, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw))
    out_h, out_w = out.shape[-2:]
    return out.reshape(b, c, out_h, out_w)


def official_modulated_conv(conv: ModulatedConv2d, x: Tensor, w: Tensor) -> Tensor:
    """The fused (grouped) modulated conv: one weight set per sample."""
    b, c, h, wd = x.shape
    k = conv.kernel_size
    style = conv.modulation(w).view(b, 1, c, 1, 1)
    weight = conv.scale * conv.weight * style  # [B, out, in, k, k]
    if conv.demodulate:
        demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
        weight = weight * demod.view(b, conv.out_ch, 1, 1, 1)
    weight = weight.view(b * conv.out_ch, c, k, k)
    if conv.upsample:
        x = x.view(1, b * c, h, wd)
        weight = weight.view(b, conv.out_ch, c, k, k).transpose(1, 2).reshape(b * c, -1, k, k)
        out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=b)
        out = out.view(b, conv.out_ch, *out.shape[2:])
        return native_upfirdn2d(out, conv.blur.kernel, up=1, pad=conv.blur.pad)
    x = x.view(1, b * c, h, wd)
    out = F.conv2d(x, weight, padding=conv.padding, groups=b)
    return out.view(b, conv.out_ch, h, wd)


def official_styled_conv(layer: StyledConv, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
    """Modulated conv, noise injection, then bias + leaky ReLU + gain (the CPU fallback)."""
    out = official_modulated_conv(layer.conv, x, w)
    out = out + layer.noise.weight * noise
    out = out + layer.activate.bias.view(1, -1, 1, 1)
    return F.leaky_relu(out, negative_slope=LRELU_SLOPE) * LRELU_GAIN


def official_to_rgb(layer: ToRGB, x: Tensor, w: Tensor, skip: Tensor | None) -> Tensor:
    out = official_modulated_conv(layer.conv, x, w) + layer.bias
    if skip is not None:
        up = cast(Upsample, layer.upsample)
        out = out + native_upfirdn2d(skip, up.kernel, up=up.factor, pad=up.pad)
    return out


def official_synthesis(g: Generator, wplus: Tensor) -> Tensor:
    """rosinality's Generator.forward with input_is_latent, randomize_noise=False."""
    noises = [getattr(g.noises, f"noise_{i}") for i in range(g.n_noise)]
    convs = [cast(StyledConv, c) for c in g.convs]
    to_rgbs = [cast(ToRGB, t) for t in g.to_rgbs]
    x = g.input.input.repeat(wplus.shape[0], 1, 1, 1)
    x = official_styled_conv(g.conv1, x, wplus[:, 0], noises[0])
    skip = official_to_rgb(g.to_rgb1, x, wplus[:, 1], None)
    i = 1
    for j, rgb in enumerate(to_rgbs):
        x = official_styled_conv(convs[2 * j], x, wplus[:, i], noises[i])
        x = official_styled_conv(convs[2 * j + 1], x, wplus[:, i + 1], noises[i + 1])
        skip = official_to_rgb(rgb, x, wplus[:, i + 2], skip)
        i += 2
    return skip


def upstream_clip_input(image: Tensor) -> Tensor:
    """Upsample(scale_factor=7) then AvgPool2d(size // 32): 224 px for any StyleGAN size."""
    x = F.interpolate(image, scale_factor=UPSTREAM_UPSAMPLE, mode="nearest")
    return F.avg_pool2d(x, kernel_size=image.shape[-1] // UPSTREAM_POOL_DIVISOR)


def upstream_id_features(facenet: nn.Module, image: Tensor) -> Tensor:
    x = image
    if x.shape[2] != ID_POOL:
        x = F.adaptive_avg_pool2d(x, (ID_POOL, ID_POOL))
    top, bottom, left, right = ID_CROP
    x = F.adaptive_avg_pool2d(x[:, :, top:bottom, left:right], (ID_INPUT, ID_INPUT))
    return facenet(x)


@dataclass
class OfficialSettings:
    lr: float = 0.05
    lambda_l2: float = 0.008  # lambda_similarity
    lambda_id: float = 0.005  # lambda_identity (the identity net runs even at 0)
    steps: int = 300  # only sets the learning-rate schedule here


class OfficialStep:
    """One optimisation step as the official loop runs it, on unfrozen copies of the networks."""

    def __init__(
        self,
        generator: Generator,
        clip: FrozenClip,
        audio_encoder: AudioEncoder,
        identity: IdentityLoss,
        spectrogram: Tensor,  # (1, 1, 128, 512) audio input, re-encoded every step
        w_source: Tensor,  # (1, n_latent, w_dim)
        settings: OfficialSettings,
    ) -> None:
        # Copies, so the project's frozen networks stay frozen; everything here wants gradients.
        self.generator = copy.deepcopy(generator).requires_grad_(True)
        self.clip_model = copy.deepcopy(clip.model).requires_grad_(True).eval()
        self.audio_encoder = copy.deepcopy(audio_encoder).requires_grad_(True).eval()
        self.facenet = copy.deepcopy(identity.facenet).requires_grad_(True).eval()
        self.spectrogram = spectrogram
        self.settings = settings
        self.w_init = w_source.detach().clone()
        self.latent = self.w_init.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.latent], lr=settings.lr)
        with torch.no_grad():
            self.img_orig = official_synthesis(self.generator, self.w_init)
        self.step_index = 0
        self.loss: Tensor | None = None  # kept, like the official loop's variable

    def step(self) -> float:
        s = self.settings
        self.optimizer.param_groups[0]["lr"] = lr_schedule(self.step_index / s.steps, s.lr)
        img_gen = official_synthesis(self.generator, self.latent)
        image_features = self.clip_model.encode_image(upstream_clip_input(img_gen)).float()  # type: ignore[operator]
        audio_features = self.audio_encoder(self.spectrogram).float()
        audio_features = audio_features / audio_features.norm(dim=-1, keepdim=True)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        clip_loss = 1 - (image_features @ audio_features.T)[0] * UPSTREAM_COS_SCALE
        similarity = ((self.w_init - self.latent) ** 2).sum()
        y_feats = upstream_id_features(self.facenet, self.img_orig).detach()
        y_hat_feats = upstream_id_features(self.facenet, img_gen)
        id_loss = 1 - y_hat_feats[0].dot(y_feats[0])
        loss = s.lambda_l2 * similarity + clip_loss + s.lambda_id * id_loss
        self.optimizer.zero_grad()
        loss.backward(retain_graph=True)
        self.optimizer.step()
        self.loss = loss
        self.step_index += 1
        return float(loss.detach().sum())
