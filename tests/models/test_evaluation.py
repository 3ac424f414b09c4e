"""Zero-shot, linear probe and similarity measures; embedding real clips with the official layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.datasets import ClipDataset, ClipRecord, folder_records, labels_of
from models.evaluation import (
    Embedded,
    Report,
    class_similarity,
    embed_clips,
    evaluate,
    linear_probe,
    stratified_split,
    zero_shot,
)
from models.training import load_trained_encoder
from tests.conftest import AUDIO, GOLDEN

OFFICIAL_WEIGHTS = GOLDEN / "audio_encoder_resnet18_official_keys.pth"
GOLDEN_ATOL = 1e-3  # as the audio-encoder golden test

pytestmark = pytest.mark.usefixtures("one_thread")  # small ops crawl on shared, busy cores


def clusters(n_classes: int, per_class: int, dim: int = 16, noise: float = 0.3, seed: int = 0):  # type: ignore[no-untyped-def]
    """Unit class centres and noisy members: (N, dim) points, (N,) labels, (C, dim) centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    points = centres[labels] + noise * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim)
    return points, labels, centres


def test_zero_shot_picks_the_nearest_class_text() -> None:
    text = torch.eye(3, 4)  # classes along the first three axes
    audio = torch.tensor([[1.0, 0.1, 0, 0], [0.2, 1.0, 0, 0], [0, 0.9, 0.8, 0], [0, 0, 0, 1.0]])
    labels = torch.tensor([0, 1, 2, 2])
    result = zero_shot(audio, labels, text, ["a", "b", "c"])
    assert result.predictions[:2] == [0, 1] and result.predictions[2] == 1
    assert result.top1 == pytest.approx(0.5)
    assert result.per_class == {"a": 1.0, "b": 1.0, "c": 0.0}
    assert result.topk is None  # three classes: top-5 says nothing
    points, labels, centres = clusters(8, 5)
    many = zero_shot(points, labels, centres, [str(i) for i in range(8)])
    assert many.top1 > 0.9 and many.topk is not None and many.topk >= many.top1


def test_linear_probe_leaves_each_fold_out() -> None:
    points, labels, _ = clusters(4, 15)
    folds = [str(i % 3 + 1) for i in range(len(labels))]
    probe = linear_probe(points, labels, folds, 4)
    assert set(probe.per_fold) == {"1", "2", "3"} and probe.accuracy > 0.9
    assert probe.accuracy == pytest.approx(sum(probe.per_fold.values()) / 3)
    assert probe.protocol == "leave-one-fold-out over 3 folds"
    single = linear_probe(points, labels, folds, 4, test_fold="2")
    assert list(single.per_fold) == ["2"]
    with pytest.raises(ValueError, match="no clips have fold"):
        linear_probe(points, labels, folds, 4, test_fold="9")
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    chance = linear_probe(points, shuffled, folds, 4)
    assert chance.accuracy < 0.6  # nothing to learn from mislabelled points


def test_linear_probe_without_folds_uses_a_stratified_split() -> None:
    points, labels, _ = clusters(3, 10)
    probe = linear_probe(points, labels, [None] * len(labels), 3, seed=2)
    assert list(probe.per_fold) == ["split"] and probe.accuracy > 0.8
    test = stratified_split(labels, 0.2, seed=2)
    assert [int(test[labels == c].sum()) for c in range(3)] == [2, 2, 2]
    assert torch.equal(test, stratified_split(labels, 0.2, seed=2))
    with pytest.raises(ValueError, match="too few clips"):
        linear_probe(points[:3], torch.arange(3), [None] * 3, 3)


def test_class_similarity_separates_matching_text() -> None:
    points, labels, centres = clusters(3, 6, noise=0.1)
    sims = class_similarity(points, labels, centres, ["x", "y", "z"])
    assert set(sims) == {"x", "y", "z"}
    assert all(s.clips == 6 and s.matched > 0.8 and s.matched > s.others for s in sims.values())


def test_report_table_and_json() -> None:
    points, labels, centres = clusters(3, 10)
    names = ["crackling_fire", "dog", "rain"]
    embedded_folds = [str(i % 2 + 1) for i in range(len(labels))]
    report = evaluate(
        Embedded(points, labels, embedded_folds, skipped=[4]),
        centres,
        names,
        model="encoder.pt",
        dataset="esc50",
        settings={"profile": "smoke"},
    )
    table = report.table()
    assert table.splitlines()[0] == "| model | setting | esc50 |"
    assert f"| encoder.pt | zero-shot | {report.zero_shot.top1 * 100:.1f} |" in table
    assert "| encoder.pt | linear probe |" in table and "| crackling_fire | 10 |" in table
    data = json.loads(json.dumps(report.to_json()))
    assert (
        data["skipped"] == 1 and data["classes"] == 3 and data["settings"] == {"profile": "smoke"}
    )
    assert set(data["linear_probe"]["per_fold"]) == {"1", "2"}
    assert "predictions" not in data["zero_shot"]
    assert "zero-shot accuracy" in report.summary() and "linear-probe accuracy" in report.summary()
    assert isinstance(report, Report)


def test_official_layout_embeds_real_clips_like_the_golden() -> None:
    """The official key layout loads through the evaluation path and embeds the fixture clips
    as the official code does; a missing clip is skipped and counted."""
    records = folder_records(AUDIO)
    with np.load(GOLDEN / "audio_preprocess.npz") as data:
        names = data["names"].tolist()
    by_name = {r.path.name: r for r in records}
    ordered = [by_name[n] for n in names] + [ClipRecord(AUDIO / "missing.wav", "wind")]
    encoder = load_trained_encoder(OFFICIAL_WEIGHTS)
    classes = labels_of(ordered)
    embedded = embed_clips(encoder, ClipDataset(ordered), classes, batch_size=4)
    assert embedded.skipped == [len(names)]
    assert embedded.embeddings.shape == (len(names), 512)
    assert torch.allclose(embedded.embeddings.norm(dim=-1), torch.ones(len(names)))
    assert [classes[i] for i in embedded.labels] == [Path(n).stem for n in names]
    golden = torch.nn.functional.normalize(
        torch.from_numpy(np.load(GOLDEN / "audio_encoder_outputs.npy")), dim=-1
    )
    assert float((embedded.embeddings - golden).abs().max()) < GOLDEN_ATOL
    with pytest.raises(ValueError, match="outside the class list"):
        embed_clips(encoder, ClipDataset(ordered[:1]), ["dog"])
