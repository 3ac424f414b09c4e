"""The frozen CLIP wrapper: preprocessing modes, embeddings, the CLIP loss, checkpoint loading."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.clip import (
    FrozenClip,
    clip_loss,
    load_clip,
    random_clip,
    sequence_first_attention,
    upstream_preprocess,
)

SMOKE_SIZE = 64  # input size of the smoke CLIP
EMBED_DIM = 512


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    return random_clip(seed=0)


def _images(size: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    rng = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=rng) * 2 - 1  # [-1, 1]


def test_smoke_clip_shape_and_norm(clip: FrozenClip) -> None:
    assert clip.embed_dim == EMBED_DIM
    assert clip.input_size == (SMOKE_SIZE, SMOKE_SIZE)
    emb = clip.encode_image(_images(SMOKE_SIZE, batch=2))
    assert emb.shape == (2, EMBED_DIM)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    text = clip.encode_text(["fire crackling", "a baby crying"])
    assert text.shape == (2, EMBED_DIM) and not text.requires_grad
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_random_clip_is_seeded_and_leaves_global_rng(clip: FrozenClip) -> None:
    state = torch.get_rng_state()
    again = random_clip(seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    x = _images(SMOKE_SIZE)
    assert torch.equal(clip.encode_image(x), again.encode_image(x))


def test_frozen_gradients_reach_the_image_only(clip: FrozenClip) -> None:
    x = _images(SMOKE_SIZE).requires_grad_(True)
    clip.train()  # must stay in eval mode
    assert not clip.training and not clip.model.training
    clip.encode_image(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())


def test_resize_mode_is_antialiased_resize_plus_model_normalisation(clip: FrozenClip) -> None:
    x = _images(2 * SMOKE_SIZE)
    cfg = open_clip.get_model_preprocess_cfg(clip.model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    expected = F.interpolate(
        (x + 1) / 2, size=(SMOKE_SIZE, SMOKE_SIZE), mode="bicubic", antialias=True
    )
    expected = (expected - mean) / std
    torch.testing.assert_close(clip.preprocess(x, "resize"), expected)
    assert cfg["mean"] == open_clip.OPENAI_DATASET_MEAN  # the model's own config


def test_upstream_mode_is_upsample7_then_avgpool(clip: FrozenClip) -> None:
    x = _images(2 * SMOKE_SIZE)
    kernel = 2 * SMOKE_SIZE * 7 // SMOKE_SIZE
    expected = nn.AvgPool2d(kernel)(nn.Upsample(scale_factor=7)(x))
    out = clip.preprocess(x, "upstream")
    assert out.shape == (1, 3, SMOKE_SIZE, SMOKE_SIZE)
    torch.testing.assert_close(out, expected)


def test_upstream_kernel_matches_official_formula_for_vit_b32() -> None:
    # Official: AvgPool2d(stylegan_size // 32) after Upsample(7), for a 224 px CLIP.
    x = _images(SMOKE_SIZE)
    expected = nn.AvgPool2d(SMOKE_SIZE // 32)(nn.Upsample(scale_factor=7)(x))
    out = upstream_preprocess(x, (224, 224))
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out, expected)


def test_upstream_mode_rejects_sizes_it_cannot_map(clip: FrozenClip) -> None:
    with pytest.raises(ValueError, match="resize"):
        clip.preprocess(_images(48), "upstream")
    with pytest.raises(ValueError, match="preprocess"):
        clip.preprocess(_images(SMOKE_SIZE), "crop")  # type: ignore[arg-type]


def test_clip_loss_modes() -> None:
    rng = torch.Generator().manual_seed(1)
    a = torch.randn(3, EMBED_DIM, generator=rng)
    t = torch.randn(EMBED_DIM, generator=rng)
    cos = F.cosine_similarity(a, t.unsqueeze(0), dim=-1)
    torch.testing.assert_close(clip_loss(a, t), 1 - cos)
    torch.testing.assert_close(clip_loss(a, t.unsqueeze(0), "upstream"), 1 - cos * math.exp(0.07))
    with pytest.raises(ValueError):
        clip_loss(a, torch.randn(EMBED_DIM + 1))
    with pytest.raises(ValueError):
        clip_loss(a, t, "logits")  # type: ignore[arg-type]


def test_load_clip_from_state_dict_file(clip: FrozenClip, tmp_path: Path) -> None:
    path = tmp_path / "clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.model.state_dict().items()}}, path)
    loaded = load_clip("smoke-clip", path)
    x = _images(SMOKE_SIZE)
    assert torch.equal(loaded.encode_image(x), clip.encode_image(x))
    assert torch.equal(loaded.encode_text(["rain"]), clip.encode_text(["rain"]))


def test_load_clip_from_torchscript_archive(clip: FrozenClip, tmp_path: Path) -> None:
    # OpenAI's ViT-B-32.pt is a TorchScript archive, which torch.load(weights_only=True) refuses.
    path = tmp_path / "clip_jit.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(clip.model).save(str(path))
    loaded = load_clip("smoke-clip", path)
    x = _images(SMOKE_SIZE)
    assert torch.equal(loaded.encode_image(x), clip.encode_image(x))


def test_load_clip_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_clip("smoke-clip", tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown CLIP model"):
        load_clip("ViT-Nope")


def test_sequence_first_attention_matches_the_stock_model() -> None:
    """The image tower runs sequence-first (contiguous batched projections); the stock
    batch-first model on the same weights gives the same embeddings and image gradients."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        stock = open_clip.create_model("smoke-clip", pretrained=None)
    clip = FrozenClip(copy.deepcopy(stock), open_clip.get_tokenizer("smoke-clip"))
    assert stock.visual.transformer.batch_first and not clip.model.visual.transformer.batch_first
    assert sequence_first_attention(copy.deepcopy(stock.visual)) == 2  # the smoke config's layers
    stock.eval().requires_grad_(False)
    x = _images(SMOKE_SIZE, batch=3).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ours = clip.encode_image(x)
    ref = F.normalize(stock.encode_image(clip.preprocess(x_ref)).float(), dim=-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad(ours, x, upstream)
    (grad_ref,) = torch.autograd.grad(ref, x_ref, upstream)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-4, atol=1e-6)
