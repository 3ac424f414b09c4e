"""StyleGAN2 generator (config-f, skip outputs) in plain PyTorch.

Parameter names follow rosinality/stylegan2-pytorch, so its checkpoints load with
``load_state_dict``; NVIDIA network pickles are converted to this layout by
``models.checkpoints``. All resampling is a depthwise convolution (groups = channels) on
zero-stuffed inputs, so the model needs no compiled extension and runs wherever torch runs.
Every size (resolution, per-resolution widths, mapping depth, z/w dims) is a constructor
argument read from the checkpoint.

How synthesis computes is a ``SynthesisOps`` value on the generator; every choice gives the same
image up to float rounding. The defaults are the ones ``benchmarks/run.py`` measured fastest:
styles scale the activations instead of the weights (one shared-weight conv per layer for the
whole batch, and the backward pass needs no weight-gradient convolution to reach the style);
demodulation, noise, bias, activation and gain folded into three passes with a custom backward;
Winograd 3x3 convolutions through NNPACK on CPU; NHWC memory layout on CUDA only.
``SynthesisOps.plain()`` is the official formulation, kept as the reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
MODULATIONS = ("input", "weight")
WINOGRAD_MIN_PIXELS = 32 * 32  # smaller maps: NNPACK's transforms cost more than they save
WINOGRAD_MIN_CHANNELS = 64  # fewer channels: the convolution is memory-bound either way

Modulation = Literal["input", "weight"]


@dataclass(frozen=True)
class SynthesisOps:
    """How synthesis computes: implementation choices that leave the result unchanged."""

    # "input": scale each input channel by its style, convolve with the shared weight, then
    # scale output channels by the demodulation coefficients; "weight": the official form,
    # one modulated weight per sample as a grouped conv (the backward pass then needs a
    # weight-gradient convolution per layer to reach the style).
    modulation: Modulation = "input"
    # NHWC activations; None: on CUDA only (cuDNN's tensor-core kernels want NHWC, as NVIDIA's
    # stylegan2-ada runs its fp16 layers), off on CPU where oneDNN measured no gain overall.
    channels_last: bool | None = None
    fused_epilogue: bool = True  # demod + noise + bias + leaky ReLU + gain: see modulated_bias_act
    # Same-size 3x3 convs (and their input gradients) as Winograd F(6x6, 3x3) through NNPACK
    # on CPU fp32: ~2x fewer multiplications. Applies to "input" modulation; ignored elsewhere.
    winograd: bool = True

    def __post_init__(self) -> None:
        if self.modulation not in MODULATIONS:
            raise ValueError(
                f"modulation must be one of {list(MODULATIONS)}, got {self.modulation!r}"
            )

    @classmethod
    def plain(cls) -> SynthesisOps:
        """The official formulation (rosinality / the paper's code), as a reference."""
        return cls(modulation="weight", channels_last=False, fused_epilogue=False, winograd=False)


DEFAULT_OPS = SynthesisOps()


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
    weight = kernel.flip([0, 1]).to(x.dtype).expand(c, 1, *kernel.shape).contiguous()
    if pad[0] == pad[1] >= 0:  # the conv pads itself: no padded copy of x
        return F.conv2d(x, weight, padding=pad[0], groups=c)  # weight [C, 1, K, K]
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    return F.conv2d(x, weight, groups=c)


def fused_lrelu(x: Tensor, bias: Tensor, clamp: float | None = None) -> Tensor:
    """Bias, leaky ReLU, gain sqrt(2), then optional symmetric clamp (NVIDIA's bias_act order)."""
    x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    return x if clamp is None else x.clamp(-clamp, clamp)


def modulated_bias_act(
    x: Tensor,
    demod: Tensor | None,
    bias: Tensor,
    noise: Tensor | None = None,
    noise_strength: Tensor | None = None,
    clamp: float | None = None,
) -> Tensor:
    """``fused_lrelu(x * demod + noise_strength * noise, bias, clamp)`` in fewer passes.

    x [B, C, H, W], demod [B, C] or None, bias [C], noise [B|1, 1, H, W], noise_strength [1].
    The leaky ReLU is positively homogeneous, so the gain folds into the per-channel scale and
    offset: forward is one multiply-add, one noise add and one activation, all on one buffer;
    backward computes the scale's gradient as a per-channel dot product (no product tensor).
    """
    b, c = x.shape[:2]
    if demod is None:
        scale = x.new_full((1, 1, 1, 1), LRELU_GAIN)
    else:
        scale = (demod * LRELU_GAIN).view(b, c, 1, 1).to(x.dtype)
    offset = (bias * LRELU_GAIN).view(1, c, 1, 1).to(x.dtype)
    noise_term = None
    if noise is not None:
        strength = LRELU_GAIN if noise_strength is None else noise_strength * LRELU_GAIN
        noise_term = (strength * noise).to(x.dtype)  # [B|1, 1, H, W]
    y: Tensor = _ScaleBiasAct.apply(x, scale, offset, noise_term)
    return y if clamp is None else y.clamp(-clamp, clamp)


def scale_channels(x: Tensor, scale: Tensor) -> Tensor:
    """``x * scale`` for x [B, C, H, W] and scale [B|1, C, 1, 1], with a cheaper backward."""
    out: Tensor = _ChannelScale.apply(x, scale)
    return out


def _channel_dot(a: Tensor, b: Tensor, like: Tensor) -> Tensor:
    """Per-(sample, channel) dot products of two [B, C, H, W] maps, reduced to ``like``'s shape.

    One contraction: no [B, C, H, W] product tensor is written and read back.
    """
    dots = torch.einsum("bchw,bchw->bc", a, b)  # [B, C]
    return dots.view(*dots.shape, 1, 1).sum_to_size(like.shape).to(like.dtype)


class _ScaleBiasAct(torch.autograd.Function):
    """y = leaky_relu(x * scale + offset + noise_term); saves x and y, not the pre-activation."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, scale: Tensor, offset: Tensor, noise_term: Tensor | None
    ) -> Tensor:
        z = torch.addcmul(offset, x, scale)
        if noise_term is not None:
            z.add_(noise_term)
        F.leaky_relu_(z, LRELU_SLOPE)
        ctx.save_for_backward(x, scale, z)
        ctx.shapes = (offset.shape, None if noise_term is None else noise_term.shape)
        return z

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
        x, scale, y = ctx.saved_tensors
        offset_shape, noise_shape = ctx.shapes
        # The activation's derivative from the sign of its output (positive gain and slope).
        grad_z = torch.ops.aten.leaky_relu_backward(grad, y, LRELU_SLOPE, True)
        need = ctx.needs_input_grad
        grad_x = grad_z * scale if need[0] else None
        grad_scale = _channel_dot(grad_z, x, scale) if need[1] else None
        grad_offset = grad_z.sum_to_size(offset_shape) if need[2] else None
        grad_noise = grad_z.sum_to_size(noise_shape) if need[3] else None
        return grad_x, grad_scale, grad_offset, grad_noise


class _ChannelScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(x, scale)
        return x * scale

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, scale = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad_x = grad * scale if need[0] else None
        grad_scale = _channel_dot(grad, x, scale) if need[1] else None
        return grad_x, grad_scale


def nnpack_available() -> bool:
    """Whether this torch build has NNPACK (x86 / ARM CPU builds) for Winograd convolutions."""
    return bool(torch._nnpack_available())


class _Winograd3x3(torch.autograd.Function):
    """Stride-1, padding-1 3x3 conv on CPU through NNPACK's Winograd F(6x6, 3x3) kernels.

    Both the forward pass and the input gradient (a 3x3 conv with the flipped, transposed
    weight) take Winograd's ~2x fewer multiplications; a weight gradient, if ever needed,
    comes from the standard convolution backward.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, flipped: Tensor | None) -> Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x if weight.requires_grad else x.new_empty(0), weight)
        ctx.flipped = flipped
        return _nnpack_per_sample(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            flipped = ctx.flipped if ctx.flipped is not None else flip_for_input_grad(weight)
            grad_x = _nnpack_per_sample(grad, flipped)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [False, True, False],
            )[1]  # fmt: skip
        return grad_x, grad_w, None


def _nnpack_per_sample(x: Tensor, weight: Tensor) -> Tensor:
    """NNPACK's conv one sample at a time: its batched entry point (meant for training batches
    of 16+) ran several times slower per sample than batch-1 calls at B = 2..8 (measured)."""
    if x.shape[0] == 1:
        return torch._nnpack_spatial_convolution(x, weight, None, [1, 1])
    return torch.cat(
        [torch._nnpack_spatial_convolution(s, weight, None, [1, 1]) for s in x.split(1)]
    )


def flip_for_input_grad(weight: Tensor) -> Tensor:
    """[out, in, 3, 3] -> [in, out, 3, 3] flipped: the conv that gives a 3x3 conv's input grad."""
    return weight.flip([2, 3]).transpose(0, 1).contiguous()


def conv3x3(x: Tensor, weight: Tensor, winograd: bool, flipped: Tensor | None = None) -> Tensor:
    """Same-size 3x3 conv; Winograd through NNPACK when asked and it pays (CPU, fp32, big maps).

    Below ~32x32 pixels or 64 channels the per-call weight / input transforms cost more than
    the multiplications they save (measured by ``benchmarks/run.py``), so oneDNN runs those.
    ``flipped``: ``flip_for_input_grad(weight)`` if the caller keeps it (frozen weights).
    """
    _, c, h, w = x.shape
    if (
        winograd
        and h * w >= WINOGRAD_MIN_PIXELS
        and min(c, weight.shape[0]) >= WINOGRAD_MIN_CHANNELS
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and nnpack_available()
        and not torch.compiler.is_compiling()  # NNPACK has no fake-tensor kernel for tracing
    ):
        out: Tensor = _Winograd3x3.apply(x, weight, flipped)
        return out
    return F.conv2d(x, weight, padding=1)


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

    ``SynthesisOps.modulation`` picks the formulation: "weight" folds the batch into conv groups
    (one modulated weight set per sample); "input" scales the activations instead and runs one
    conv with the shared weight. With ``upsample`` the conv is a stride-2 transposed conv
    followed by the blur filter.
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
        self._derived: dict[str, tuple[tuple[object, ...], Tensor]] = {}

    def _weight_derived(self, name: str, dtype: torch.dtype, make: Callable[[], Tensor]) -> Tensor:
        """A tensor computed from the weight, kept while the weight is frozen and unchanged.

        Latent optimisation calls every layer hundreds of times with the same frozen weight;
        layouts and norms derived from it are computed once. Trainable weights are not cached.
        """
        weight = self.weight
        if weight.requires_grad or torch.compiler.is_compiling():
            return make()
        key = (weight.data_ptr(), weight._version, weight.device, dtype)
        hit = self._derived.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = make()
        self._derived[name] = (key, value)
        return value

    def forward(self, x: Tensor, w: Tensor, ops: SynthesisOps = DEFAULT_OPS) -> Tensor:
        """[B, in, H, W], [B, w_dim] -> [B, out, H', W'] modulated (and demodulated) output."""
        out, demod = self.forward_parts(x, w, ops)
        return out if demod is None else out * demod.view(*demod.shape, 1, 1).to(out.dtype)

    def forward_parts(
        self, x: Tensor, w: Tensor, ops: SynthesisOps = DEFAULT_OPS
    ) -> tuple[Tensor, Tensor | None]:
        """The conv output and the demodulation still to apply to it ([B, out] or None).

        "input" modulation leaves the per-output-channel demodulation to the caller, who can
        fold it into the bias and activation passes.
        """
        style = self.modulation(w)  # [B, in]
        if ops.modulation == "weight":
            return self._weight_modulated(x, style), None
        if self.kernel_size == 1 and not self.upsample:
            return self._pointwise(x, style)
        return self._input_modulated(x, style, ops.winograd)

    def _weight_modulated(self, x: Tensor, style: Tensor) -> Tensor:
        b, c, h, wd = x.shape
        k = self.kernel_size
        weight = self.scale * self.weight * style.view(b, 1, c, 1, 1)  # [B, out, in, k, k]
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

    def _pointwise(self, x: Tensor, style: Tensor) -> tuple[Tensor, Tensor | None]:
        """A 1x1 conv (to-RGB) as one batched matmul with per-sample modulated weights.

        Its weight gradient is a small [out, in] product, cheaper than scaling the input.
        """
        b, c, h, wd = x.shape
        weight = self.scale * self.weight[0, :, :, 0, 0] * style.view(b, 1, c)  # [B, out, in]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum(2, keepdim=True) + DEMOD_EPS)
        weight = weight.to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            pixels = x.permute(0, 2, 3, 1).reshape(b, h * wd, c)  # a view of NHWC memory
            out = torch.bmm(pixels, weight.transpose(1, 2))  # [B, HW, out]
            return out.view(b, h, wd, self.out_ch).permute(0, 3, 1, 2), None
        out = torch.bmm(weight, x.reshape(b, c, h * wd))  # [B, out, HW]
        return out.view(b, self.out_ch, h, wd), None

    def _input_modulated(
        self, x: Tensor, style: Tensor, winograd: bool
    ) -> tuple[Tensor, Tensor | None]:
        b, c = x.shape[:2]
        dtype = x.dtype
        weight = self._weight_derived("weight", dtype, lambda: self.weight[0].to(dtype))
        scaled = scale_channels(x, (style * self.scale).view(b, c, 1, 1).to(dtype))
        if self.upsample:
            weight_t = self._weight_derived(  # [in, out, k, k], conv_transpose2d's layout
                "transposed", dtype, lambda: weight.transpose(0, 1).contiguous()
            )
            out = F.conv_transpose2d(scaled, weight_t, stride=UP)  # [B, out, 2H+1, 2W+1]
            out = self.blur(out)  # [B, out, 2H, 2W]
        elif self.kernel_size == 3:
            flipped = self._weight_derived("flipped", dtype, lambda: flip_for_input_grad(weight))
            out = conv3x3(scaled, weight, winograd, flipped)  # [B, out, H, W]
        else:
            out = F.conv2d(scaled, weight, padding=self.padding)
        if not self.demodulate:
            return out, None
        # sum over (in, k, k) of (scale * W * s)^2 = (s^2 @ sum_k W^2) * scale^2, in fp32
        weight_sq = self._weight_derived(
            "energy", torch.float32, lambda: self.weight[0].float().square().sum([2, 3])
        )  # [out, in]
        energy = (style.float().square() @ weight_sq.t()) * self.scale**2  # [B, out]
        return out, torch.rsqrt(energy + DEMOD_EPS)

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

    def forward(
        self, x: Tensor, w: Tensor, noise: Tensor | None, ops: SynthesisOps = DEFAULT_OPS
    ) -> Tensor:
        out, demod = self.conv.forward_parts(x, w, ops)
        if ops.fused_epilogue:
            return modulated_bias_act(
                out, demod, self.activate.bias, noise, self.noise.weight, self.activate.clamp
            )
        if demod is not None:
            out = out * demod.view(*demod.shape, 1, 1).to(out.dtype)
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

    def forward(
        self, x: Tensor, w: Tensor, skip: Tensor | None = None, ops: SynthesisOps = DEFAULT_OPS
    ) -> Tensor:
        out = self.conv(x, w, ops) + self.bias  # [B, 3, H, W]
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
        ops: SynthesisOps = DEFAULT_OPS,  # how synthesis computes (same result either way)
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
        self.ops = ops

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
            f"n_latent={self.n_latent}, conv_clamp={self.conv_clamp}, ops={self.ops}"
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
        ops: SynthesisOps | None = None,
    ) -> Tensor:
        """[B, n_latent, w_dim] -> [B, 3, H, W] (contiguous NCHW) in roughly [-1, 1].

        noise_mode: "const" = stored maps, "random" = fresh N(0, 1), "none" = no noise;
        an explicit ``noise`` list (n_noise maps [B|1, 1, R, R]) overrides the mode.
        ``ops`` overrides ``self.ops`` for this call.
        """
        if wplus.ndim != 3 or wplus.shape[1:] != (self.n_latent, self.w_dim):
            raise ValueError(
                f"wplus must be [B, {self.n_latent}, {self.w_dim}], got {list(wplus.shape)}"
            )
        ops = self.ops if ops is None else ops
        b = wplus.shape[0]
        noises = self._noise_list(b, wplus, noise_mode, noise)
        x = self.input(b)  # [B, C4, 4, 4]
        channels_last = wplus.is_cuda if ops.channels_last is None else ops.channels_last
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, wplus[:, 0], noises[0], ops)  # [B, C4, 4, 4]
        img = self.to_rgb1(x, wplus[:, 1], ops=ops)  # [B, 3, 4, 4]
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            x = self.convs[2 * j](x, wplus[:, i], noises[i], ops)  # [B, C, 2R, 2R]
            x = self.convs[2 * j + 1](x, wplus[:, i + 1], noises[i + 1], ops)
            img = to_rgb(x, wplus[:, i + 2], img, ops)
        return img.contiguous()

    def forward(
        self,
        wplus: Tensor,
        noise_mode: str = "const",
        noise: Sequence[Tensor] | None = None,
        ops: SynthesisOps | None = None,
    ) -> Tensor:
        """Same as ``synthesis``: latent optimisation works on W+ directly."""
        return self.synthesis(wplus, noise_mode=noise_mode, noise=noise, ops=ops)


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
