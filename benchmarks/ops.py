"""Op-level alternatives, forward + backward, at the shapes of the 256 px generator's last block.

Each group times the implementations of one op against each other (alternated rounds, median);
the model keeps the fastest that is exact. Variants that lost are kept here so the choice can be
re-checked on other hardware.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks.measure import alternate, ratio
from benchmarks.official import native_upfirdn2d, upstream_clip_input
from models.stylegan2 import (
    BLUR_TAPS,
    ModulatedConv2d,
    SynthesisOps,
    fused_lrelu,
    make_kernel,
    modulated_bias_act,
    upfirdn2d,
)

Step = Callable[[], object]
UP = 2
BLUR_PAD = (1, 1)  # after a stride-2 3x3 transposed conv with the 4-tap filter


def _fwd_bwd(fn: Callable[..., Tensor], *inputs: Tensor) -> Step:
    """One forward and a backward into every input that requires grad."""

    def step() -> None:
        out = fn(*inputs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    return step


def _leaf(*shape: int, seed: int, channels_last: bool = False) -> Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def blur_group() -> dict[str, Step]:
    """The 4x4 blur after the up-conv: [1, 128, 257, 257] -> [1, 128, 256, 256]."""
    kernel = make_kernel(BLUR_TAPS, UP**2)
    taps = torch.tensor(BLUR_TAPS, dtype=torch.float32)
    k1 = taps / taps.sum() * UP  # separable factor: outer(k1, k1) == kernel
    x = _leaf(1, 128, 257, 257, seed=0)
    x_nhwc = _leaf(1, 128, 257, 257, seed=0, channels_last=True)
    c = x.shape[1]

    def separable(t: Tensor) -> Tensor:
        rows = k1.flip(0).view(1, 1, -1, 1).expand(c, 1, -1, 1).contiguous()
        cols = k1.flip(0).view(1, 1, 1, -1).expand(c, 1, 1, -1).contiguous()
        t = F.conv2d(t, rows, padding=(BLUR_PAD[0], 0), groups=c)
        return F.conv2d(t, cols, padding=(0, BLUR_PAD[0]), groups=c)

    return {
        "native (channels into batch)": _fwd_bwd(
            lambda t: native_upfirdn2d(t, kernel, 1, BLUR_PAD), x
        ),
        "depthwise conv [kept]": _fwd_bwd(lambda t: upfirdn2d(t, kernel, pad=BLUR_PAD), x),
        "separable depthwise (4x1, 1x4)": _fwd_bwd(separable, x),
        "depthwise conv, NHWC": _fwd_bwd(lambda t: upfirdn2d(t, kernel, pad=BLUR_PAD), x_nhwc),
    }


def upconv_group() -> dict[str, Step]:
    """The x2 up-conv 256 -> 128 channels at 128 px, blur included: -> [1, 128, 256, 256]."""
    kernel = make_kernel(BLUR_TAPS, UP**2)
    x = _leaf(1, 256, 128, 128, seed=1)
    weight = torch.randn(256, 128, 3, 3, generator=torch.Generator().manual_seed(2)) / 48
    fused = F.conv_transpose2d(  # the 3x3 kernel convolved with the blur: one 6x6 kernel
        weight.reshape(-1, 1, 3, 3), kernel.view(1, 1, 4, 4), padding=0
    ).view(256, 128, 6, 6)

    def transposed_then_blur(t: Tensor) -> Tensor:
        return upfirdn2d(F.conv_transpose2d(t, weight, stride=UP), kernel, pad=BLUR_PAD)

    return {
        "transposed conv + depthwise blur [kept]": _fwd_bwd(transposed_then_blur, x),
        "one transposed conv, blur folded in (6x6)": _fwd_bwd(
            lambda t: F.conv_transpose2d(t, fused, stride=UP, padding=2), x
        ),
    }


def modconv_group() -> dict[str, Step]:
    """Modulated 3x3 conv 128 -> 128 at 256 px, gradient to the input and the style."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        conv = ModulatedConv2d(128, 128, 3, 512).requires_grad_(False)
    x = _leaf(1, 128, 256, 256, seed=4)
    w = _leaf(1, 512, seed=5)
    return {
        "weight-modulated grouped conv (official)": _fwd_bwd(
            lambda a, b: conv(a, b, SynthesisOps(modulation="weight")), x, w
        ),
        "input-modulated shared conv [kept]": _fwd_bwd(
            lambda a, b: conv(a, b, SynthesisOps(modulation="input")), x, w
        ),
    }


def torgb_group() -> dict[str, Step]:
    """The 1x1 to-RGB modulated conv 128 -> 3 at 256 px."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        conv = ModulatedConv2d(128, 3, 1, 512, demodulate=False).requires_grad_(False)
    x = _leaf(1, 128, 256, 256, seed=7)
    w = _leaf(1, 512, seed=8)

    def input_scaled(a: Tensor, b: Tensor) -> Tensor:
        style = conv.modulation(b) * conv.scale  # [1, 128]
        return F.conv2d(a * style.view(1, -1, 1, 1), conv.weight[0])

    return {
        "grouped conv (official)": _fwd_bwd(
            lambda a, b: conv(a, b, SynthesisOps(modulation="weight")), x, w
        ),
        "input-scaled 1x1 conv": _fwd_bwd(input_scaled, x, w),
        "batched matmul [kept]": _fwd_bwd(lambda a, b: conv(a, b, SynthesisOps()), x, w),
    }


def epilogue_group() -> dict[str, Step]:
    """Demodulation + noise + bias + leaky ReLU + gain on [1, 128, 256, 256]."""
    x = _leaf(1, 128, 256, 256, seed=9)
    demod = (torch.rand(1, 128) + 0.5).requires_grad_(True)
    noise = torch.randn(1, 1, 256, 256)
    bias = torch.randn(128) * 0.1
    strength = torch.tensor([0.1])

    def separate(a: Tensor, d: Tensor) -> Tensor:
        out = a * d.view(1, -1, 1, 1)
        out = out + strength * noise
        return fused_lrelu(out, bias)

    return {
        "separate ops (official order)": _fwd_bwd(separate, x, demod),
        "fused: addcmul + in-place noise/act [kept]": _fwd_bwd(
            lambda a, d: modulated_bias_act(a, d, bias, noise, strength), x, demod
        ),
    }


def clip_input_group() -> dict[str, Step]:
    """256 px image -> 224 px CLIP input: the official x7 + pool vs one antialiased resize."""
    image = _leaf(1, 3, 256, 256, seed=10)

    def resize(t: Tensor) -> Tensor:
        return F.interpolate(t, size=(224, 224), mode="bicubic", antialias=True)

    return {
        "upsample x7 + avg pool (official)": _fwd_bwd(upstream_clip_input, image),
        "antialiased bicubic resize [kept]": _fwd_bwd(resize, image),
    }


GROUPS: dict[str, Callable[[], dict[str, Step]]] = {
    "modulated 3x3 conv": modconv_group,
    "up-conv + blur": upconv_group,
    "blur filter": blur_group,
    "to-RGB 1x1 conv": torgb_group,
    "bias + activation epilogue": epilogue_group,
    "CLIP input": clip_input_group,
}


def run_ops(
    device: torch.device, rounds: int, deadline: float | None = None
) -> list[dict[str, Any]]:
    """Every group, alternated; each variant's median time and its ratio to the kept one."""
    rows: list[dict[str, Any]] = []
    for group, build in GROUPS.items():
        if deadline is not None and time.monotonic() > deadline:
            break
        variants = build()
        samples = alternate(variants, rounds, device, warmup=1, deadline=deadline)
        kept = next(name for name in variants if name.endswith("[kept]"))
        for name, s in samples.items():
            seconds = s.summary()["step_s"]
            rows.append(
                {
                    "group": group,
                    "variant": name,
                    "ms": None if seconds is None else 1000 * seconds,
                    "vs_kept": ratio(s, samples[kept]),
                }
            )
    return rows


def check_fused_upconv() -> float:
    """Largest difference between the two up-conv formulations (they must agree)."""
    kernel = make_kernel(BLUR_TAPS, UP**2)
    x = torch.randn(1, 4, 8, 8)
    weight = torch.randn(4, 3, 3, 3)
    fused = F.conv_transpose2d(weight.reshape(-1, 1, 3, 3), kernel.view(1, 1, 4, 4)).view(
        4, 3, 6, 6
    )
    a = upfirdn2d(F.conv_transpose2d(x, weight, stride=UP), kernel, pad=BLUR_PAD)
    b = F.conv_transpose2d(x, fused, stride=UP, padding=2)
    return float((a - b).abs().max())
