"""The profile's CLIP and the bank of prompt embeddings the audio encoder is trained toward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.clip import FrozenClip, random_clip
from models.prompts import PromptAugmenter
from models.text_embeddings import (
    SMOKE_CLIP_SEED,
    build_prompt_bank,
    encode_prompts,
    profile_clip,
)

LABELS = ["crackling_fire", "explosion", "xqzt"]


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    return random_clip(SMOKE_CLIP_SEED)


def test_bank_rows_belong_to_their_label(clip: FrozenClip) -> None:
    bank = build_prompt_bank(LABELS, clip, variants=4, seed=0, augmenter=PromptAugmenter())
    assert bank.counts.tolist()[2] == 1  # no synonyms: the plain prompt only
    assert bank.counts.tolist()[:2] == [4, 4]
    plain = [bank.prompts[int(o)] for o in bank.offsets]
    assert plain == ["crackling fire", "explosion", "xqzt"]
    assert torch.allclose(bank.plain, encode_prompts(clip, plain), atol=1e-6)
    assert torch.allclose(bank.embeddings.norm(dim=-1), torch.ones(len(bank.prompts)))
    labels = torch.tensor([0, 1, 2] * 50)
    picks = bank.sample(labels, torch.Generator().manual_seed(0))  # (150, D)
    rows = (picks @ bank.embeddings.T).argmax(dim=1)  # which prompt each pick is
    owners = torch.repeat_interleave(torch.arange(3), bank.counts)
    assert torch.equal(owners[rows], labels)
    assert len(set(rows[labels == 1].tolist())) == 4  # every variant gets drawn
    again = bank.sample(labels, torch.Generator().manual_seed(0))
    assert torch.equal(picks, again)


def test_templates_and_plain_banks_need_no_wordnet(clip: FrozenClip) -> None:
    bank = build_prompt_bank(["dog_bark"], clip, template="the sound of {}")
    assert bank.prompts == ["the sound of dog bark"] and bank.counts.tolist() == [1]


def test_profile_clips(tmp_path: Path) -> None:
    from models.engine import SMOKE_SEED

    assert SMOKE_CLIP_SEED == SMOKE_SEED  # smoke-trained encoders target the service's CLIP
    smoke = profile_clip("smoke", tmp_path)
    reference = random_clip(SMOKE_SEED)
    assert torch.equal(smoke.encode_text(["fire"]), reference.encode_text(["fire"]))
    with pytest.raises(FileNotFoundError, match="soundedit models pull ffhq"):
        profile_clip("ffhq", tmp_path)
    with pytest.raises(ValueError, match="unknown profile"):
        profile_clip("imagenet", tmp_path)
