"""StyleGAN2 generator: parity with rosinality's model on its golden outputs, and the
seeded random generator used offline."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
import torch

from models.checkpoints import load_generator
from models.stylegan2 import BLUR_TAPS, Generator, make_kernel, random_generator, upfirdn2d
from tests.conftest import GOLDEN
from tests.models.conftest import max_err

log = logging.getLogger(__name__)

TOL = 1e-4  # max abs error allowed against the upstream implementation's outputs
TRUNCATION = 0.7  # the psi the goldens were made with
SMALL = {"resolution": 16, "channels": 8, "w_dim": 32, "n_mapping": 2}  # fast test model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rosinality() -> tuple[Generator, dict[str, np.ndarray]]:
    io = np.load(GOLDEN / "stylegan2_rosinality_64px_io.npz")
    return load_generator(GOLDEN / "stylegan2_rosinality_64px.pt"), dict(io)


Case = Callable[[Generator, dict[str, np.ndarray]], tuple[torch.Tensor, str]]
ROSINALITY_CASES: dict[str, Case] = {
    "w": lambda g, io: (g.mapping(torch.from_numpy(io["z"])), "w"),
    "trunc_wplus": lambda g, io: (
        g.broadcast(g.mapping(torch.from_numpy(io["z"]), TRUNCATION)),
        "trunc_wplus",
    ),
    "img_trunc": lambda g, io: (g.synthesis(torch.from_numpy(io["trunc_wplus"])), "img_trunc"),
    "img_repeat": lambda g, io: (g.synthesis(torch.from_numpy(io["wplus_repeat"])), "img_repeat"),
    "img_random": lambda g, io: (g.synthesis(torch.from_numpy(io["wplus_random"])), "img_random"),
}


@pytest.mark.parametrize("case", sorted(ROSINALITY_CASES))
def test_rosinality_golden(
    rosinality: tuple[Generator, dict[str, np.ndarray]],
    case: str,
    record_property: Callable[[str, object], None],
) -> None:
    g, io = rosinality
    with torch.no_grad():
        ours, key = ROSINALITY_CASES[case](g, io)
    err = max_err(ours, io[key])
    record_property("max_abs_err", err)
    log.info("rosinality %s: max abs err %.3g", case, err)
    assert err <= TOL


def test_rosinality_truncated_image_end_to_end(
    rosinality: tuple[Generator, dict[str, np.ndarray]],
) -> None:
    g, io = rosinality
    with torch.no_grad():
        img = g(g.broadcast(g.mapping(torch.from_numpy(io["z"]), TRUNCATION)))
    assert max_err(img, io["img_trunc"]) <= TOL


def test_random_generator_is_deterministic() -> None:
    a = random_generator(**SMALL, seed=3).state_dict()
    b = random_generator(**SMALL, seed=3).state_dict()
    c = random_generator(**SMALL, seed=4).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["convs.0.conv.weight"], c["convs.0.conv.weight"])


def test_random_generator_shapes_and_frozen() -> None:
    g = random_generator(**SMALL)
    assert (g.resolution, g.n_latent, g.w_dim, g.z_dim) == (16, 6, 32, 32)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    assert g.w_avg.abs().sum() > 0
    with torch.no_grad():
        w = g.mapping(torch.randn(2, g.z_dim))
        img = g.synthesis(g.broadcast(w))
    assert w.shape == (2, 32) and img.shape == (2, 3, 16, 16)
    assert torch.isfinite(img).all()


def test_gradients_reach_wplus_and_noise() -> None:
    g = random_generator(**SMALL)
    wplus = g.broadcast(g.w_avg[None]).clone().requires_grad_(True)
    noise = [n.requires_grad_(True) for n in g.const_noise()]
    g.synthesis(wplus, noise=noise).square().mean().backward()
    assert wplus.grad is not None and wplus.grad.abs().sum() > 0
    assert all(n.grad is not None for n in noise)
    assert all(p.grad is None for p in g.parameters())


def test_noise_modes() -> None:
    g = random_generator(**SMALL)
    wplus = g.broadcast(g.w_avg[None])
    with torch.no_grad():
        const = g.synthesis(wplus, "const")
        explicit = g.synthesis(wplus, noise=g.const_noise())
        none = g.synthesis(wplus, "none")
        zeros = g.synthesis(wplus, noise=[torch.zeros_like(n) for n in g.const_noise()])
        rand = g.synthesis(wplus, "random")
    assert torch.equal(const, explicit)
    assert torch.allclose(none, zeros)
    assert not torch.allclose(const, none) and not torch.allclose(const, rand)
    with pytest.raises(ValueError, match="noise_mode"):
        g.synthesis(wplus, "bogus")
    with pytest.raises(ValueError, match="wplus"):
        g.synthesis(wplus[:, 1:])


def test_conv_clamp_bounds_every_layer() -> None:
    g = random_generator(**SMALL)
    clamped = Generator(16, 8, z_dim=32, w_dim=32, n_mapping=2, conv_clamp=0.1)
    clamped.load_state_dict(g.state_dict())
    with torch.no_grad():
        img = clamped(g.broadcast(g.w_avg[None]))
    # Each to-RGB output is clamped, then summed with the up-sampled (unit-gain) previous image.
    assert img.abs().max() <= 0.1 * g.n_latent / 2 + 1e-6


def test_upsample_preserves_constant_interior() -> None:
    # The x2 filter has unit DC gain per output phase: a constant stays constant inside.
    x = torch.full((1, 2, 8, 8), 3.0)
    y = upfirdn2d(x, make_kernel(BLUR_TAPS, gain=4), up=2, pad=(2, 1))
    assert y.shape == (1, 2, 16, 16)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 3.0))
