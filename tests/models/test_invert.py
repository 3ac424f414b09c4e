"""Inversion into W+: metrics, perceptual losses, the optimisation loop and the photo entry point."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.models import vgg as tv_vgg

from models.invert import InvertConfig, InvertStep, invert
from models.optimize import EditCanceled
from models.perceptual import (
    LPIPS,
    LPIPS_CHANNELS,
    StructureLoss,
    load_lpips,
    psnr,
    ssim,
    vgg16_features,
)
from models.photo import prepare_photo
from models.sface import load_sface_identity
from models.stylegan2 import Generator, random_generator
from tests.conftest import IMAGES

STEPS = 60  # enough for a clear drop at 64 px
REPEAT_STEPS = 12  # for the determinism check
MIN_GAIN_DB = 6.0  # PSNR gained over the w_avg start
SSIM_C1 = 0.01**2


@pytest.fixture(scope="module")
def generator(one_thread: None) -> Iterator[Generator]:
    yield random_generator(64, 64, seed=11)


@pytest.fixture(scope="module")
def target(generator: Generator) -> Tensor:
    """An image the generator itself made from a random latent (so it is reachable)."""
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return generator.synthesis(generator.broadcast(generator.mapping(z, truncation=0.7)))


def test_ssim_of_flat_images_has_a_closed_form() -> None:
    a = torch.full((1, 3, 32, 32), 0.2 * 2 - 1)  # 0.2 on the [0, 1] scale
    b = torch.full((1, 3, 32, 32), 0.6 * 2 - 1)
    expected = (2 * 0.2 * 0.6 + SSIM_C1) / (0.2**2 + 0.6**2 + SSIM_C1)  # luminance term only
    assert float(ssim(a, b)[0]) == pytest.approx(expected, abs=1e-3)
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    slightly, badly = (x + 0.2 * noise).clamp(-1, 1), (x + 0.8 * noise).clamp(-1, 1)
    assert 1 > float(ssim(x, slightly)[0]) > float(ssim(x, badly)[0])
    assert float(ssim(x, badly)[0]) < 0.7
    torch.testing.assert_close(ssim(x, badly), ssim(badly, x))


def test_psnr_of_a_known_error() -> None:
    a = torch.zeros(1, 3, 16, 16)
    b = a + 0.2  # 0.1 on the [0, 1] scale -> MSE 0.01 -> 20 dB
    assert float(psnr(a, b)[0]) == pytest.approx(20.0, abs=1e-4)


def test_structure_loss_is_zero_only_for_equal_images() -> None:
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    y = torch.roll(x, 2, dims=3).requires_grad_(True)
    loss = StructureLoss()
    assert float(loss(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    value = loss(y, x)
    value.sum().backward()
    assert float(value[0].detach()) > 0.1 and y.grad is not None and y.grad.abs().sum() > 0


def test_vgg_layout_is_torchvisions() -> None:
    reference = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)  # VGG16 "features"
    ours = vgg16_features()
    expected = {k: v.shape for k, v in reference.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected  # indices 0..28


def test_lpips_loader_reads_the_official_layouts(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    vgg = {
        f"features.{k}": torch.randn(v.shape, generator=gen) * 0.05
        for k, v in vgg16_features().state_dict().items()
    }
    vgg["classifier.6.bias"] = torch.zeros(1000)  # the rest of torchvision's file is ignored
    lins = {
        f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen)
        for k, c in enumerate(LPIPS_CHANNELS)
    }
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lins, tmp_path / "lpips_vgg.pth")
    model = load_lpips(tmp_path / "vgg16.pth", tmp_path / "lpips_vgg.pth")
    assert isinstance(model, LPIPS) and not model.training
    loaded = model.state_dict()
    torch.testing.assert_close(loaded["features.28.weight"], vgg["features.28.weight"])
    torch.testing.assert_close(loaded["lins.4.model.1.weight"], lins["lin4.model.1.weight"])
    x = torch.rand(1, 3, 32, 32, generator=gen) * 2 - 1
    assert float(model(x, x)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(model(x, -x)[0]) > 0
    del lins["lin2.model.1.weight"]
    torch.save(lins, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="lin2.model.1.weight"):
        load_lpips(tmp_path / "vgg16.pth", tmp_path / "broken.pth")


def test_inversion_reconstructs_a_generated_image(generator: Generator, target: Tensor) -> None:
    steps: list[InvertStep] = []
    result = invert(generator, target, InvertConfig(steps=STEPS), on_step=steps.append)
    with torch.no_grad():
        start = generator.synthesis(generator.broadcast(generator.w_avg[None]))
    start_psnr = float(psnr(start, target)[0])
    assert result.latent.shape == (1, generator.n_latent, generator.w_dim)
    assert [s.step for s in steps] == list(range(STEPS)) and steps[-1].preview
    assert all(s.steps == STEPS and np.isfinite(s.loss) for s in steps)
    assert np.mean(result.losses[-5:]) < 0.3 * np.mean(result.losses[:5])
    assert result.psnr > start_psnr + MIN_GAIN_DB, (start_psnr, result.psnr)
    assert 0 < result.ssim <= 1


def test_inversion_is_deterministic(generator: Generator, target: Tensor) -> None:
    config = InvertConfig(steps=REPEAT_STEPS)
    first = invert(generator, target, config)
    second = invert(generator, target, config)
    assert torch.equal(first.latent, second.latent)
    assert first.losses == second.losses


def test_inversion_can_be_canceled(generator: Generator, target: Tensor) -> None:
    calls = iter(range(100))
    with pytest.raises(EditCanceled) as info:
        invert(generator, target, InvertConfig(steps=10), should_cancel=lambda: next(calls) >= 3)
    assert info.value.step == 3 and info.value.phase == "inverting"


def test_prepare_photo_face_and_other(generator: Generator) -> None:
    phases: list[str] = []
    face = prepare_photo(
        generator,
        Image.open(IMAGES / "astronaut.png"),
        domain="face",
        steps=3,
        identity=load_sface_identity(),
        on_phase=phases.append,
    )
    assert phases == ["aligning", "inverting"]
    assert face.aligned.shape == face.reconstruction.shape == (64, 64, 3)
    assert face.aligned.dtype == face.reconstruction.dtype == np.uint8
    assert face.latent.shape == (1, generator.n_latent, generator.w_dim)
    assert face.faces_found == 1 and face.landmarks is not None and np.isfinite(face.psnr)
    other = prepare_photo(generator, Image.open(IMAGES / "coffee.png"), domain="other", steps=2)
    assert other.faces_found == 0 and other.landmarks is None
    with pytest.raises(ValueError, match="domain"):
        prepare_photo(generator, Image.open(IMAGES / "coffee.png"), domain="cat", steps=1)  # type: ignore[arg-type]
