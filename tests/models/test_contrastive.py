"""The contrastive objectives (paper Eq. 1 and the official InfoNCE) and SpecAugment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from models.contrastive import (
    MAX_LOGIT_SCALE,
    MEL_MASK_FRACTION,
    SPEC_AUGMENT_ROUNDS,
    TIME_MASK_FRACTION,
    ContrastiveLoss,
    info_nce,
    pairwise_bce,
    same_label_targets,
    spec_augment,
)

B, D = 6, 16


def embeddings(seed: int) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed))


def cosine_logits(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def test_official_loss_is_the_mean_of_four_infonce_terms() -> None:
    audio, text, view = embeddings(0), embeddings(1), embeddings(2)
    loss = ContrastiveLoss("infonce", temperature=0.1)
    out = loss(audio, text, view)
    labels = torch.arange(B)
    at = cosine_logits(audio, text, 10.0)
    av = cosine_logits(audio, view, 10.0)
    expected = (
        F.cross_entropy(at, labels)
        + F.cross_entropy(at.T, labels)
        + F.cross_entropy(av, labels)
        + F.cross_entropy(av.T, labels)
    ) / 4
    assert torch.allclose(out.total, expected, atol=1e-5)
    assert set(out.terms) == {"audio_text", "audio_view"}
    without_view = loss(audio, text)
    assert torch.allclose(without_view.total, out.terms["audio_text"], atol=1e-6)


def test_paper_loss_is_pairwise_binary_cross_entropy() -> None:
    audio, text = embeddings(3), embeddings(4)
    out = ContrastiveLoss("bce", temperature=0.5)(audio, text)
    p = torch.sigmoid(cosine_logits(audio, text, 2.0))
    eye = torch.eye(B)
    expected = -(eye * p.log() + (1 - eye) * (1 - p).log()).mean()
    assert torch.allclose(out.total, expected, atol=1e-5)
    assert torch.allclose(pairwise_bce(torch.zeros(B, B)), torch.tensor(math.log(2.0)))


@pytest.mark.parametrize("kind", ["infonce", "bce"])
def test_aligned_pairs_score_better_than_random_ones(kind: str) -> None:
    loss = ContrastiveLoss(kind)  # type: ignore[arg-type]
    audio = embeddings(5)
    aligned = loss(audio, audio + 0.01 * embeddings(6)).total
    shuffled = loss(audio, embeddings(7)).total
    assert aligned < shuffled
    if kind == "infonce":
        assert shuffled > 0.5 * math.log(B)


def test_same_label_positives() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    targets = same_label_targets(labels)
    assert targets.diagonal().all() and targets[0, 2] and targets[1, 4] and not targets[0, 1]
    logits = torch.randn(B, B, generator=torch.Generator().manual_seed(8))
    soft = targets.float() / targets.float().sum(1, keepdim=True)
    expected = -(soft * logits.log_softmax(dim=1)).sum(1).mean()
    assert torch.allclose(info_nce(logits, targets), expected, atol=1e-6)
    loss = ContrastiveLoss()
    audio, text = embeddings(9), embeddings(10)
    assert not torch.allclose(loss(audio, text, targets=targets).total, loss(audio, text).total)


def test_temperature_fixed_or_learned() -> None:
    fixed = ContrastiveLoss(temperature=0.07)
    assert fixed.logit_scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert not fixed.log_scale.requires_grad
    learned = ContrastiveLoss(temperature=0.07, learnable_temperature=True)
    audio = embeddings(11).requires_grad_()
    learned(audio, embeddings(12)).total.backward()
    assert learned.log_scale.grad is not None and learned.log_scale.grad.abs() > 0
    with torch.no_grad():
        learned.log_scale.fill_(10.0)
    assert learned.logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    with pytest.raises(ValueError, match="temperature"):
        ContrastiveLoss(temperature=0.001)
    with pytest.raises(ValueError, match="unknown loss"):
        ContrastiveLoss("triplet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        fixed(embeddings(0), embeddings(1)[:3])


def test_spec_augment_masks_bands_of_the_resized_spectrogram() -> None:
    inputs = torch.rand(4, 1, 128, 512, generator=torch.Generator().manual_seed(0)) + 0.5
    before = inputs.clone()
    torch.manual_seed(123)
    global_state = torch.get_rng_state()
    view = spec_augment(inputs, seed=7)
    assert torch.equal(torch.get_rng_state(), global_state)  # the caller's RNG is untouched
    assert torch.equal(inputs, before)
    assert torch.equal(spec_augment(inputs, seed=7), view)
    assert not torch.equal(spec_augment(inputs, seed=8), view)
    kept = view != 0
    assert torch.equal(view[kept], inputs[kept])  # only zeroing
    resized = view.reshape(4, 512, 128)  # mel rows x time columns, as the official code masks
    zero_rows = (resized == 0).all(dim=2).sum(dim=1)  # (4,)
    zero_cols = (resized == 0).all(dim=1).sum(dim=1)  # (4,)
    assert (zero_rows <= SPEC_AUGMENT_ROUNDS * int(MEL_MASK_FRACTION * 512)).all()
    assert (zero_cols <= SPEC_AUGMENT_ROUNDS * int(TIME_MASK_FRACTION * 128)).all()
    assert zero_rows.sum() > 0 and zero_cols.sum() > 0
    masked = (resized == 0).flatten(1)  # every zero lies in a fully masked row or column
    in_band = (resized == 0).all(dim=2, keepdim=True) | (resized == 0).all(dim=1, keepdim=True)
    assert torch.equal(masked, in_band.flatten(1))
    row_masks = {tuple((resized[i] == 0).all(dim=1).nonzero().flatten().tolist()) for i in range(4)}
    assert len(row_masks) > 1  # each clip draws its own masks
    with pytest.raises(ValueError, match="expected inputs"):
        spec_augment(torch.rand(2, 128, 512), seed=0)
