"""Every optimised StyleGAN2 op against a plain reference implementation written here.

The references follow the official formulation literally (per-sample modulated weights, each
channel filtered on its own, bias + activation + gain as separate steps); the project's ops must
match them in value and in gradient, in both memory layouts.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models.stylegan2 import (
    BLUR_TAPS,
    DEMOD_EPS,
    LRELU_GAIN,
    LRELU_SLOPE,
    ModulatedConv2d,
    SynthesisOps,
    conv3x3,
    fused_lrelu,
    make_kernel,
    modulated_bias_act,
    nnpack_available,
    random_generator,
    upfirdn2d,
)

TOL = 1e-5  # float32 rounding of reordered sums, on values of order 1
GRAD_TOL = 1e-4  # gradients pass through a few more reordered sums
# Winograd F(6x6, 3x3) transforms lose a few more bits than a direct convolution: relative
# error ~1e-5 per conv, which stays within the generator goldens' 1e-4 after a whole network.
WINOGRAD_TOL = 1e-4
WINOGRAD_GRAD_TOL = 1e-3  # style gradients sum ~1e5 such products (cancellation included)
LAYOUTS = ("nchw", "nhwc")

pytestmark = pytest.mark.usefixtures("one_thread")


def _rand(*shape: int, seed: int = 0, layout: str = "nchw") -> Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x


def _close(ours: Tensor, ref: Tensor, tol: float = TOL) -> None:
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


# --------------------------------------------------------------------------- references


def ref_upfirdn2d(x: Tensor, kernel: Tensor, up: int, pad: tuple[int, int]) -> Tensor:
    """Zero-stuff, pad or crop, then a true convolution, one channel at a time."""
    b, c, h, w = x.shape
    stuffed = x.new_zeros(b, c, h * up, w * up)
    stuffed[:, :, ::up, ::up] = x
    p0, p1 = pad
    stuffed = F.pad(stuffed, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    height, width = stuffed.shape[-2:]
    stuffed = stuffed[:, :, max(-p0, 0) : height - max(-p1, 0), max(-p0, 0) : width - max(-p1, 0)]
    k = kernel.flip([0, 1])[None, None]  # [1, 1, K, K]: correlation with the flipped kernel
    channels = [F.conv2d(stuffed[:, i : i + 1], k) for i in range(c)]
    return torch.cat(channels, dim=1)


def ref_bias_act(
    x: Tensor,
    demod: Tensor | None,
    bias: Tensor,
    noise: Tensor | None,
    strength: Tensor,
    clamp: float | None,
) -> Tensor:
    """Demodulate, add noise, then bias + leaky ReLU + gain + clamp, each as its own step."""
    if demod is not None:
        x = x * demod[:, :, None, None]
    if noise is not None:
        x = x + strength * noise
    return fused_lrelu(x, bias, clamp)


def ref_modulated_conv(conv: ModulatedConv2d, x: Tensor, w: Tensor) -> Tensor:
    """One sample at a time: modulate and demodulate the weight, then convolve."""
    outs = []
    for b in range(x.shape[0]):
        style = conv.modulation(w[b : b + 1])[0]  # [in]
        weight = conv.scale * conv.weight[0] * style[None, :, None, None]  # [out, in, k, k]
        if conv.demodulate:
            norm = weight.pow(2).sum(dim=(1, 2, 3), keepdim=True)
            weight = weight / torch.sqrt(norm + DEMOD_EPS)
        xb = x[b : b + 1]
        if conv.upsample:
            out = F.conv_transpose2d(xb, weight.transpose(0, 1), stride=2)
            out = ref_upfirdn2d(out, conv.blur.kernel, up=1, pad=conv.blur.pad)
        else:
            out = F.conv2d(xb, weight, padding=conv.padding)
        outs.append(out)
    return torch.cat(outs)


# --------------------------------------------------------------------------- up/down-sampling


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("up", "pad", "gain"),
    [(1, (1, 1), 4.0), (1, (2, 1), 1.0), (2, (2, 1), 4.0), (1, (0, 0), 1.0), (1, (-1, 2), 1.0)],
)
def test_upfirdn2d_matches_per_channel_reference(
    layout: str, up: int, pad: tuple[int, int], gain: float
) -> None:
    kernel = make_kernel(BLUR_TAPS, gain)
    x = _rand(2, 5, 9, 9, layout=layout).requires_grad_(True)
    x_ref = x.detach().clone().contiguous().requires_grad_(True)
    ours, ref = upfirdn2d(x, kernel, up=up, pad=pad), ref_upfirdn2d(x_ref, kernel, up, pad)
    _close(ours, ref)
    upstream = _rand(*ref.shape, seed=1)
    ours.backward(upstream)
    ref.backward(upstream)
    assert x.grad is not None and x_ref.grad is not None
    _close(x.grad, x_ref.grad)


def test_upfirdn2d_asymmetric_kernel_is_a_true_convolution() -> None:
    # A non-symmetric kernel tells a convolution from a correlation.
    kernel = torch.arange(1.0, 10.0).view(3, 3)
    x = _rand(1, 2, 6, 6)
    _close(upfirdn2d(x, kernel, pad=(1, 1)), ref_upfirdn2d(x, kernel, 1, (1, 1)))


# --------------------------------------------------------------------------- bias + activation


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_demod", [True, False])
@pytest.mark.parametrize("with_noise", [True, False])
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_modulated_bias_act_matches_separate_steps(
    layout: str, with_demod: bool, with_noise: bool, clamp: float | None
) -> None:
    b, c, h = 2, 6, 5
    x = _rand(b, c, h, h, layout=layout)
    demod = _rand(b, c, seed=1).abs() + 0.5 if with_demod else None
    noise = _rand(1, 1, h, h, seed=2) if with_noise else None
    bias, strength = _rand(c, seed=3), _rand(1, seed=4)
    used_strength = strength if noise is not None else None
    leaves = [t for t in (x, demod, noise, bias, used_strength) if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    ours = modulated_bias_act(x, demod, bias, noise, strength, clamp)
    ref = ref_bias_act(x, demod, bias, noise, strength, clamp)
    _close(ours, ref)
    upstream = _rand(b, c, h, h, seed=5)
    ours_grads = torch.autograd.grad(ours, leaves, upstream)
    ref_grads = torch.autograd.grad(ref, leaves, upstream)
    for g_ours, g_ref in zip(ours_grads, ref_grads, strict=True):
        _close(g_ours, g_ref, GRAD_TOL)
    if layout == "nhwc":
        assert ours.is_contiguous(memory_format=torch.channels_last)


def test_modulated_bias_act_negative_slope_and_gain() -> None:
    x = torch.tensor([-2.0, 3.0]).view(1, 2, 1, 1)
    out = modulated_bias_act(x, None, torch.zeros(2))
    expected = torch.tensor([-2.0 * LRELU_SLOPE, 3.0]) * LRELU_GAIN
    _close(out.flatten(), expected)


# --------------------------------------------------------------------------- Winograd 3x3 conv


@pytest.mark.parametrize("shape", [(64, 72, 32, 40), (96, 64, 33, 35)])
def test_winograd_conv3x3_matches_direct_conv(shape: tuple[int, int, int, int]) -> None:
    assert nnpack_available()  # the CPU builds this project installs ship NNPACK
    c_in, c_out, h, w = shape
    x = _rand(2, c_in, h, w).requires_grad_(True)
    weight = (_rand(c_out, c_in, 3, 3, seed=1) / math.sqrt(9 * c_in)).requires_grad_(True)
    ours = conv3x3(x, weight, winograd=True)
    assert ours.grad_fn is not None and "Winograd" in type(ours.grad_fn).__name__
    ref = F.conv2d(x, weight, padding=1)
    _close(ours, ref, WINOGRAD_TOL)
    upstream = _rand(*ref.shape, seed=2)
    for g_ours, g_ref in zip(
        torch.autograd.grad(ours, (x, weight), upstream),
        torch.autograd.grad(ref, (x, weight), upstream),
        strict=True,
    ):
        _close(g_ours, g_ref, WINOGRAD_TOL)
    assert torch.equal(conv3x3(x, weight, winograd=False), ref)  # the exact path stays exact


def test_winograd_skips_small_maps() -> None:
    x = _rand(1, 64, 16, 16)  # below WINOGRAD_MIN_PIXELS: oneDNN's direct conv runs
    weight = _rand(64, 64, 3, 3, seed=1)
    assert torch.equal(conv3x3(x, weight, winograd=True), F.conv2d(x, weight, padding=1))


def test_winograd_falls_back_off_cpu_fp32() -> None:
    x = _rand(1, 4, 8, 8).double()
    weight = _rand(4, 4, 3, 3, seed=1).double()
    out = conv3x3(x, weight, winograd=True)  # NNPACK is fp32-only: the direct conv runs
    assert out.dtype == torch.float64
    assert torch.equal(out, F.conv2d(x, weight, padding=1))


# --------------------------------------------------------------------------- modulated convs


CONV_CASES = [  # (in, out, k, demodulate, upsample, size)
    (6, 5, 3, True, False, 7),
    (6, 5, 3, True, True, 7),
    (6, 3, 1, False, False, 7),
    (6, 4, 1, True, False, 7),
    (64, 72, 3, True, False, 32),  # big enough for the Winograd path
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    ("modulation", "winograd"), [("input", True), ("input", False), ("weight", False)]
)
@pytest.mark.parametrize(
    "case", CONV_CASES, ids=lambda c: "in{}-out{}-k{}-d{:d}-up{:d}-{}px".format(*c)
)
def test_modulated_conv_matches_per_sample_reference(
    layout: str, modulation: str, winograd: bool, case: tuple[int, int, int, bool, bool, int]
) -> None:
    in_ch, out_ch, k, demodulate, upsample, size = case
    w_dim, batch = 8, 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = ModulatedConv2d(in_ch, out_ch, k, w_dim, demodulate=demodulate, upsample=upsample)
    conv.requires_grad_(False)
    conv.modulation.bias.copy_(1.0 + 0.3 * _rand(in_ch, seed=9))  # styles away from 1
    x = _rand(batch, in_ch, size, size, layout=layout).requires_grad_(True)
    w = _rand(batch, w_dim, seed=1).requires_grad_(True)
    ops = SynthesisOps(modulation=modulation, winograd=winograd)  # type: ignore[arg-type]
    ours = conv(x, w, ops)
    ref = ref_modulated_conv(conv, x, w)
    uses_winograd = modulation == "input" and winograd and k == 3 and not upsample
    _close(ours, ref, WINOGRAD_TOL if uses_winograd else TOL)
    upstream = _rand(*ref.shape, seed=2)
    ours_grads = torch.autograd.grad(ours, (x, w), upstream)
    ref_grads = torch.autograd.grad(ref, (x, w), upstream)
    for g_ours, g_ref in zip(ours_grads, ref_grads, strict=True):
        _close(g_ours, g_ref, WINOGRAD_GRAD_TOL if uses_winograd else GRAD_TOL)


# --------------------------------------------------------------------------- whole synthesis


@pytest.mark.parametrize(
    "ops",
    [
        SynthesisOps(),
        SynthesisOps(winograd=False),
        SynthesisOps(channels_last=True),
        SynthesisOps(channels_last=True, fused_epilogue=False),
        SynthesisOps(fused_epilogue=False),
        SynthesisOps(modulation="weight", channels_last=True),
    ],
    ids=str,
)
def test_synthesis_ops_match_the_official_formulation(ops: SynthesisOps) -> None:
    g = random_generator(32, {4: 16, 8: 16, 16: 12, 32: 8}, w_dim=16, n_mapping=2, seed=2)
    rng = torch.Generator().manual_seed(3)
    wplus = (g.w_avg + 0.5 * torch.randn(3, g.n_latent, g.w_dim, generator=rng)).requires_grad_()
    noise = [n.clone().requires_grad_(True) for n in g.const_noise()]
    ours = g.synthesis(wplus, noise=noise, ops=ops)
    ref = g.synthesis(wplus, noise=noise, ops=SynthesisOps.plain())
    assert ours.is_contiguous() and ours.shape == (3, 3, 32, 32)
    tol = WINOGRAD_TOL if ops.winograd and ops.modulation == "input" else TOL
    _close(ours, ref, tol)
    upstream = torch.randn(ref.shape, generator=rng)
    ours_grads = torch.autograd.grad(ours, [wplus, *noise], upstream)
    ref_grads = torch.autograd.grad(ref, [wplus, *noise], upstream)
    for g_ours, g_ref in zip(ours_grads, ref_grads, strict=True):
        _close(g_ours, g_ref, max(tol, GRAD_TOL))


def test_default_synthesis_with_winograd_matches_the_official_formulation() -> None:
    """The smoke profile's generator (64 channels up to 64 px) takes the Winograd path."""
    g = random_generator(64, 64, seed=1)
    rng = torch.Generator().manual_seed(4)
    wplus = (g.w_avg + 0.5 * torch.randn(2, g.n_latent, g.w_dim, generator=rng)).requires_grad_()
    ours = g.synthesis(wplus)
    assert any("Winograd" in type(n).__name__ for n in _graph_nodes(ours))
    ref = g.synthesis(wplus, ops=SynthesisOps.plain())
    _close(ours, ref, WINOGRAD_TOL)
    upstream = torch.randn(ref.shape, generator=rng)
    (g_ours,) = torch.autograd.grad(ours, wplus, upstream)
    (g_ref,) = torch.autograd.grad(ref, wplus, upstream)
    _close(g_ours, g_ref, WINOGRAD_GRAD_TOL)


def test_synthesis_ops_default_and_override() -> None:
    g = random_generator(16, 8, w_dim=16, n_mapping=2)
    assert g.ops == SynthesisOps()
    plain = SynthesisOps.plain()
    assert (plain.modulation, plain.channels_last, plain.fused_epilogue, plain.winograd) == (
        "weight",
        False,
        False,
        False,
    )
    assert SynthesisOps().channels_last is None  # NHWC on CUDA only
    wplus = g.broadcast(g.w_avg[None])
    with torch.no_grad():
        default = g.synthesis(wplus)
        g.ops = plain
        overridden = g.synthesis(wplus, ops=SynthesisOps())
        as_plain = g.synthesis(wplus)
    assert torch.equal(default, overridden)
    _close(default, as_plain)
    with pytest.raises(ValueError, match="modulation"):
        SynthesisOps(modulation="both")  # type: ignore[arg-type]


def test_input_modulation_needs_no_weight_gradient_conv() -> None:
    """Why "input" is the default: no backward convolution has to produce a weight gradient."""
    g = random_generator(16, 8, w_dim=16, n_mapping=2)
    wplus = g.broadcast(g.w_avg[None]).clone().requires_grad_(True)
    convs = 2 * int(math.log2(16 // 4)) + 1  # 3x3 convs: one at 4 px, two per later block
    for modulation, weight_grads in (("input", 0), ("weight", convs)):
        image = g.synthesis(wplus, ops=SynthesisOps(modulation=modulation))  # type: ignore[arg-type]
        nodes = _conv_nodes(image)
        assert len(nodes) >= convs
        # next_functions[1] is the weight's branch: None when autograd needs no weight gradient.
        assert sum(node.next_functions[1][0] is not None for node in nodes) >= weight_grads
        if weight_grads == 0:
            assert all(node.next_functions[1][0] is None for node in nodes)


def _graph_nodes(output: Tensor) -> list[torch.autograd.graph.Node]:
    """Every node of the autograd graph behind ``output``."""
    seen: set[torch.autograd.graph.Node] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return list(seen)


def _conv_nodes(output: Tensor) -> list[torch.autograd.graph.Node]:
    """Every convolution node in the autograd graph behind ``output``."""
    return [n for n in _graph_nodes(output) if n.name() == "ConvolutionBackward0"]


def test_weight_derived_tensors_follow_weight_updates() -> None:
    """Frozen-weight layouts are cached per layer; an in-place weight change must show."""
    g = random_generator(64, 64, seed=1)  # big enough for the cached Winograd layout
    wplus = g.broadcast(g.w_avg[None])
    with torch.no_grad():
        before = g.synthesis(wplus)
        assert torch.equal(g.synthesis(wplus), before)  # served from the cache
        for name in ("convs.0.conv.weight", "convs.1.conv.weight", "to_rgb1.conv.weight"):
            g.get_parameter(name).mul_(1.5)
        after = g.synthesis(wplus)
        plain = g.synthesis(wplus, ops=SynthesisOps.plain())
    assert not torch.allclose(after, before, atol=1e-3)
    _close(after, plain, WINOGRAD_TOL)
