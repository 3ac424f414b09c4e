"""IR-SE50 identity network: the released key layout, preprocessing, loss and loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.identity import IRSE50, IdentityLoss, load_identity, random_identity
from tests.conftest import GOLDEN

FACE_PX = 112


@pytest.fixture(scope="module")
def backbone() -> IRSE50:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return IRSE50().eval()


def test_state_dict_layout_equals_released_file(backbone: IRSE50) -> None:
    expected = json.loads((GOLDEN / "shapes_arcface_ir_se50.json").read_text())["state_dict"]
    actual = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    assert set(actual) == set(expected)
    assert actual == expected


def test_forward_gives_unit_features(backbone: IRSE50) -> None:
    x = torch.rand(1, 3, FACE_PX, FACE_PX, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        feats = backbone(x)
    assert feats.shape == (1, 512) and torch.isfinite(feats).all()
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(1))
    with pytest.raises(ValueError):
        backbone(torch.zeros(1, 3, 64, 64))


class _Recorder(nn.Module):
    """Stand-in backbone: records its input and returns a fixed unit feature per image."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return F.normalize(x.flatten(1)[:, :512], dim=-1)


@pytest.mark.parametrize("size", [256, 64])
def test_official_preprocessing(size: int) -> None:
    recorder = _Recorder()
    loss = IdentityLoss(recorder)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    loss.features(x)
    pooled = x if size == 256 else nn.AdaptiveAvgPool2d(256)(x)
    expected = nn.AdaptiveAvgPool2d(FACE_PX)(pooled[:, :, 35:223, 32:220])
    torch.testing.assert_close(recorder.seen[0], expected)


def test_loss_and_similarity_semantics() -> None:
    loss = IdentityLoss(_Recorder())
    a = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    b = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    fa, fb = loss.features(a), loss.features(b)
    torch.testing.assert_close(loss(a, b), 1 - (fa * fb).sum())
    torch.testing.assert_close(loss(a, a), torch.zeros(()), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss.similarity(a, b), (fa * fb).sum(-1))


def test_load_released_layout(tmp_path: Path) -> None:
    source = random_identity(seed=3)
    path = tmp_path / "model_ir_se50.pth"
    torch.save({f"module.{k}": v for k, v in source.facenet.state_dict().items()}, path)
    loaded = load_identity(path)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(4)) * 2 - 1
    assert torch.equal(loaded.features(x), source.features(x))
    with pytest.raises(FileNotFoundError):
        load_identity(tmp_path / "missing.pth")
