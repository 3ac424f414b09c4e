"""StyleGAN2 generator (config-f, skip outputs) in plain PyTorch.

Parameter names follow rosinality/stylegan2-pytorch, so its checkpoints load with
``load_state_dict``; NVIDIA network pickles are converted to this layout by
``models.checkpoints``. All resampling is a depthwise convolution (groups = channels) on
zero-stuffed inputs, so the model needs no compiled extension and runs wherever torch runs.
Every size (resolution, per-resolution widths, mapping depth, z/w dims) is a constructor
argument read from the checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.frozen import freeze

LRELU_SLOPE = 0.2  # leaky ReLU negative slope used everywhere in StyleGAN2
LRELU_GAIN = math.sqrt(2.0)  # keeps activations at unit variance after the leaky ReLU
DEMOD_EPS = 1e-8  # added to the squared weight norm before demodulation
PIXELNORM_EPS = 1e-8  # added to the second moment when normalising z
BLUR_TAPS = (1, 3, 3, 1)  # separable low-pass filter for up-sampling
UP = 2  # resolution factor between consecutive synthesis blocks
CONST_RES = 4  # resolution of the learned constant input
RGB = 3  # output image channels
MAPPING_LR_MUL = 0.01  # learning-rate multiplier of the mapping layers (equalized lr)
MEAN_LATENT_SAMPLES = 4096  # z samples averaged for w_avg (rosinality's mean_latent(4096))
RANDOM_BIAS_STD = 0.1  # spread of randomised biases / noise strengths in random_generator
NOISE_MODES = ("const", "random", "none")


def make_kernel(taps: Sequence[float], gain: float = 1.0) -> Tensor:
    """Separable 2-D FIR kernel normalised to sum ``gain``: (K,) taps -> [K, K]."""
    k = torch.tensor(list(taps), dtype=torch.float32)
    k2 = torch.outer(k, k)
    return k2 / k2.sum() * gain


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Zero-stuff by ``up``, pad (negative crops), then convolve each channel with ``kernel``.

    [B, C, H, W] -> [B, C, H*up + pad0 + pad1 - K + 1, same for W]. A true convolution (the
    kernel is flipped), done as one depthwise conv2d so no channel is folded into the batch.
    """
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))  # zeros after each sample, both axes
        x = x.reshape(b, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    weight = kernel.flip([0, 1]).to(x.dtype).expand(c, 1, *kernel.shape).contiguous()
    return F.conv2d(x, weight, groups=c)  # weight [C, 1, K, K]


def fused_lrelu(x: Tensor, bias: Tensor, clamp: float | None = None) -> Tensor:
    """Bias, leaky ReLU, gain sqrt(2), then optional symmetric clamp (NVIDIA's bias_act order)."""
    x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    return x if clamp is None else x.clamp(-clamp, clamp)


class PixelNorm(nn.Module):
    """Normalise each latent to unit second moment: [B, D] -> [B, D]."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + PIXELNORM_EPS)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: unit-scale storage, He scale at run time."""

    def __init__(
        self,
        in_dim: int,  # input features
        out_dim: int,  # output features
        bias_init: float = 0.0,  # initial bias (1 for style affines: start at identity)
        lr_mul: float = 1.0,  # learning-rate multiplier; storage is divided by it
        activate: bool = False,  # fused leaky ReLU after the bias
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # [out, in]
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))  # [out]
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        if self.activate:
            return fused_lrelu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        out_dim, in_dim = self.weight.shape
        return f"in={in_dim}, out={out_dim}, lr_mul={self.lr_mul:g}, activate={self.activate}"


class Blur(nn.Module):
    """Low-pass FIR filter applied after a stride-2 transposed convolution."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float], pad: tuple[int, int], gain: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps, gain))  # [K, K]
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 up-sampling with the FIR filter: [B, C, H, W] -> [B, C, 2H, 2W]."""

    kernel: Tensor

    def __init__(self, taps: Sequence[float], factor: int = UP) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(taps, factor**2))  # [K, K]
        p = len(taps) - factor
        self.factor = factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Conv whose weights are scaled per input channel by a style, optionally demodulated.

    The batch is folded into conv groups (one weight set per sample); with ``upsample`` the
    conv is a stride-2 transposed conv followed by the blur filter.
    """

    def __init__(
        self,
        in_ch: int,  # input channels
        out_ch: int,  # output channels
        kernel_size: int,  # square kernel size (3 for convs, 1 for to-RGB)
        w_dim: int,  # latent (style) dimension feeding the modulation affine
        demodulate: bool = True,  # normalise output channels to unit expected variance
        upsample: bool = False,  # double the resolution
        blur_taps: Sequence[float] = BLUR_TAPS,  # up-sampling filter taps
    ) -> None:
        super().__init__()
        k = kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, k, k))  # [1, out, in, k, k]
        self.modulation = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * k * k)
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, k
        self.demodulate, self.upsample = demodulate, upsample
        self.padding = k // 2
        if upsample:
            p = len(blur_taps) - UP - (k - 1)
            self.blur = Blur(blur_taps, pad=((p + 1) // 2 + UP - 1, p // 2 + 1), gain=UP**2)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:  # [B, in, H, W], [B, w_dim]
        b, c, h, wd = x.shape
        k = self.kernel_size
        style = self.modulation(w).view(b, 1, c, 1, 1)
        weight = self.scale * self.weight * style  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4], keepdim=True) + DEMOD_EPS)
        x = x.reshape(1, b * c, h, wd)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(b * c, self.out_ch, k, k)
            out = F.conv_transpose2d(x, weight, stride=UP, groups=b)  # [1, B*out, 2H+1, 2W+1]
            return self.blur(out.view(b, self.out_ch, *out.shape[2:]))  # [B, out, 2H, 2W]
        weight = weight.reshape(b * self.out_ch, c, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=b)
        return out.view(b, self.out_ch, h, wd)  # [B, out, H, W]

    def extra_repr(self) -> str:
        return (
            f"in={self.in_ch}, out={self.out_ch}, k={self.kernel_size}, "
            f"demodulate={self.demodulate}, upsample={self.upsample}"
        )


class NoiseInjection(nn.Module):
    """Adds per-pixel noise scaled by a learned strength (one scalar per layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # [1]

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:  # [B, C, H, W] + [B|1, 1, H, W]
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    """Per-channel bias, leaky ReLU x sqrt(2), optional clamp (NVIDIA's conv_clamp)."""

    def __init__(self, channels: int, clamp: float | None = None) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))  # [C]
        self.clamp = clamp

    def forward(self, x: Tensor) -> Tensor:
        return fused_lrelu(x, self.bias, self.clamp)


class ConstantInput(nn.Module):
    """Learned constant that starts the synthesis: -> [B, C, 4, 4]."""

    def __init__(self, channels: int, size: int = CONST_RES) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))  # [1, C, 4, 4]

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)


class StyledConv(nn.Module):
    """Modulated 3x3 conv, noise, bias + activation: one W+ entry per layer."""

    def __init__(
        self,
        in_ch: int,  # input channels
        out_ch: int,  # output channels
        w_dim: int,  # latent dimension
        upsample: bool = False,  # double the resolution (first conv of a block)
        conv_clamp: float | None = None,  # clamp activations to +-conv_clamp; None = off
        blur_taps: Sequence[float] = BLUR_TAPS,  # up-sampling filter taps
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, w_dim, upsample=upsample, blur_taps=blur_taps)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_ch, clamp=conv_clamp)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor | None) -> Tensor:
        out = self.conv(x, w)
        if noise is not None:
            out = self.noise(out, noise)
        return self.activate(out)


class ToRGB(nn.Module):
    """1x1 modulated conv (no demodulation) to RGB, added to the up-sampled previous RGB."""

    def __init__(
        self,
        in_ch: int,  # input channels
        w_dim: int,  # latent dimension
        upsample: bool = True,  # up-sample the incoming skip image (all but the 4x4 one)
        conv_clamp: float | None = None,  # clamp this layer's RGB to +-conv_clamp; None = off
        blur_taps: Sequence[float] = BLUR_TAPS,  # up-sampling filter taps
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, RGB, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, RGB, 1, 1))  # [1, 3, 1, 1]
        if upsample:
            self.upsample = Upsample(blur_taps)
        self.conv_clamp = conv_clamp

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias  # [B, 3, H, W]
        if self.conv_clamp is not None:
            out = out.clamp(-self.conv_clamp, self.conv_clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


def channel_table(resolution: int, channels: int | Mapping[int, int]) -> dict[int, int]:
    """Widths for every resolution 4..resolution; an int means the same width everywhere."""
    resolutions = [CONST_RES * UP**i for i in range(int(math.log2(resolution // CONST_RES)) + 1)]
    if isinstance(channels, int):
        return dict.fromkeys(resolutions, channels)
    missing = [r for r in resolutions if r not in channels]
    if missing:
        raise ValueError(f"channel table lacks resolutions {missing}")
    return {r: int(channels[r]) for r in resolutions}


class Generator(nn.Module):
    """StyleGAN2 generator: ``mapping`` (z -> w) and ``synthesis`` (W+ -> image) kept separate.

    W+ layout: entry 0 drives the 4x4 conv, 1 the 4x4 to-RGB; each later block uses three
    consecutive entries (up-conv, conv, to-RGB) overlapping by one, n_latent = 2*log2(res) - 2.
    """

    w_avg: Tensor

    def __init__(
        self,
        resolution: int,  # output height = width, a power of two >= 4
        channels: int | Mapping[int, int],  # feature width per resolution (or one for all)
        *,
        z_dim: int,  # input latent dimension
        w_dim: int,  # intermediate latent (style) dimension
        n_mapping: int,  # number of mapping layers
        mapping_dim: int | None = None,  # hidden width of the mapping MLP; None = w_dim
        mapping_lr_mul: float = MAPPING_LR_MUL,  # lr multiplier the mapping was trained with
        conv_clamp: float | None = None,  # clamp conv / to-RGB outputs to +-this; None = off
        blur_taps: Sequence[float] = BLUR_TAPS,  # up-sampling filter taps
    ) -> None:
        super().__init__()
        log_res = int(math.log2(resolution))
        if resolution < CONST_RES or 2**log_res != resolution:
            raise ValueError(f"resolution must be a power of two >= {CONST_RES}, got {resolution}")
        if n_mapping < 1:
            raise ValueError(f"n_mapping must be >= 1, got {n_mapping}")
        table = channel_table(resolution, channels)
        self.resolution, self.z_dim, self.w_dim = resolution, z_dim, w_dim
        self.channels = table
        self.n_latent = 2 * log_res - 2
        self.n_noise = 2 * log_res - 3
        self.conv_clamp = conv_clamp

        hidden = w_dim if mapping_dim is None else mapping_dim
        dims = [z_dim] + [hidden] * (n_mapping - 1) + [w_dim]
        self.style = nn.Sequential(
            PixelNorm(),
            *[
                EqualLinear(dims[i], dims[i + 1], lr_mul=mapping_lr_mul, activate=True)
                for i in range(n_mapping)
            ],
        )

        c4 = table[CONST_RES]
        self.input = ConstantInput(c4)
        self.conv1 = StyledConv(c4, c4, w_dim, conv_clamp=conv_clamp, blur_taps=blur_taps)
        self.to_rgb1 = ToRGB(c4, w_dim, upsample=False, conv_clamp=conv_clamp, blur_taps=blur_taps)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        self.noises.register_buffer("noise_0", torch.randn(1, 1, CONST_RES, CONST_RES))
        prev = c4
        for i, res in enumerate(sorted(table)[1:]):
            ch = table[res]
            self.convs.append(
                StyledConv(prev, ch, w_dim, True, conv_clamp=conv_clamp, blur_taps=blur_taps)
            )
            self.convs.append(StyledConv(ch, ch, w_dim, conv_clamp=conv_clamp, blur_taps=blur_taps))
            self.to_rgbs.append(ToRGB(ch, w_dim, conv_clamp=conv_clamp, blur_taps=blur_taps))
            for j in (2 * i + 1, 2 * i + 2):
                self.noises.register_buffer(f"noise_{j}", torch.randn(1, 1, res, res))
            prev = ch
        self.register_buffer("w_avg", torch.zeros(w_dim))  # [w_dim]

    def extra_repr(self) -> str:
        return (
            f"resolution={self.resolution}, z_dim={self.z_dim}, w_dim={self.w_dim}, "
            f"n_latent={self.n_latent}, conv_clamp={self.conv_clamp}"
        )

    def mapping(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """[B, z_dim] -> [B, w_dim]; truncation < 1 pulls w toward ``w_avg``."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        w = self.style(z)
        if truncation != 1.0:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)
        return w

    def broadcast(self, w: Tensor) -> Tensor:
        """Copy one w to every W+ entry: [B, w_dim] -> [B, n_latent, w_dim]."""
        return w.unsqueeze(1).repeat(1, self.n_latent, 1)

    def const_noise(self) -> list[Tensor]:
        """Copies of the stored noise maps, [1, 1, R, R] each, for callers that own noise."""
        return [getattr(self.noises, f"noise_{i}").clone() for i in range(self.n_noise)]

    def _noise_list(
        self, batch: int, like: Tensor, mode: str, noise: Sequence[Tensor] | None
    ) -> list[Tensor | None]:
        if noise is not None:
            if len(noise) != self.n_noise:
                raise ValueError(f"expected {self.n_noise} noise maps, got {len(noise)}")
            return list(noise)
        if mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.n_noise)]
        if mode == "random":
            sizes = [getattr(self.noises, f"noise_{i}").shape[-1] for i in range(self.n_noise)]
            return [
                torch.randn(batch, 1, s, s, device=like.device, dtype=like.dtype) for s in sizes
            ]
        if mode == "none":
            return [None] * self.n_noise
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r}")

    def synthesis(
        self,
        wplus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """[B, n_latent, w_dim] -> [B, 3, H, W] in roughly [-1, 1].

        noise_mode: "const" = stored maps, "random" = fresh N(0, 1), "none" = no noise;
        an explicit ``noise`` list (n_noise maps [B|1, 1, R, R]) overrides the mode.
        """
        if wplus.ndim != 3 or wplus.shape[1:] != (self.n_latent, self.w_dim):
            raise ValueError(
                f"wplus must be [B, {self.n_latent}, {self.w_dim}], got {list(wplus.shape)}"
            )
        b = wplus.shape[0]
        noises = self._noise_list(b, wplus, noise_mode, noise)
        x = self.conv1(self.input(b), wplus[:, 0], noises[0])  # [B, C4, 4, 4]
        img = self.to_rgb1(x, wplus[:, 1])  # [B, 3, 4, 4]
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            x = self.convs[2 * j](x, wplus[:, i], noises[i])  # [B, C, 2R, 2R]
            x = self.convs[2 * j + 1](x, wplus[:, i + 1], noises[i + 1])
            img = to_rgb(x, wplus[:, i + 2], img)
        return img

    def forward(
        self,
        wplus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """Same as ``synthesis``: latent optimisation works on W+ directly."""
        return self.synthesis(wplus, noise_mode=noise_mode, noise=noise)


@torch.no_grad()
def compute_w_avg(generator: Generator, n: int = MEAN_LATENT_SAMPLES, seed: int = 0) -> Tensor:
    """Mean of mapping(z) over ``n`` seeded z, [w_dim]: the truncation centre."""
    rng = torch.Generator().manual_seed(seed)
    device = generator.w_avg.device
    z = torch.randn(n, generator.z_dim, generator=rng).to(device)
    return generator.mapping(z).mean(dim=0)


@torch.no_grad()
def random_generator(
    resolution: int,
    channels: int | dict[int, int] = 64,
    *,
    seed: int = 0,
    w_dim: int = 512,
    n_mapping: int = 8,
) -> Generator:
    """Seeded random weights of the real architecture, for offline profiles and tests.

    Biases and noise strengths are randomised so they affect the output; ``w_avg`` is the
    mean mapping of 4096 seeded z. Same arguments -> bit-identical weights.
    """
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        g = Generator(resolution, channels, z_dim=w_dim, w_dim=w_dim, n_mapping=n_mapping)
    rng = torch.Generator().manual_seed(seed)

    def draw(shape: torch.Size, std: float = 1.0, mean: float = 0.0) -> Tensor:
        return torch.randn(shape, generator=rng) * std + mean

    for name, p in g.named_parameters():
        if name.startswith("style.") and name.endswith(".weight"):
            p.copy_(draw(p.shape) / MAPPING_LR_MUL)
        elif name.startswith("style."):
            p.copy_(draw(p.shape, RANDOM_BIAS_STD) / MAPPING_LR_MUL)
        elif name.endswith("modulation.bias"):
            p.copy_(draw(p.shape, RANDOM_BIAS_STD, mean=1.0))
        elif name.endswith("bias") or name.endswith("noise.weight"):
            p.copy_(draw(p.shape, RANDOM_BIAS_STD))
        else:
            p.copy_(draw(p.shape))
    for i in range(g.n_noise):
        buf = getattr(g.noises, f"noise_{i}")
        buf.copy_(draw(buf.shape))
    g.w_avg.copy_(compute_w_avg(g, seed=seed))
    return freeze(g)
