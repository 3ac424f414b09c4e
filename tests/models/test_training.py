"""Training the audio encoder on the real fixture clips with the tiny random CLIP.

A narrowed ResNet-18 (same architecture, 8 base channels) keeps a few dozen CPU steps quick;
one step of the full-width encoder proves that a trained encoder loads as the service loads it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from models.audio_encoder import AudioEncoderError, load_audio_encoder
from models.clip import FrozenClip, random_clip
from models.datasets import ClipDataset, ClipRecord, folder_records
from models.training import (
    BEST,
    CONFIG,
    ENCODER,
    LAST,
    METRICS,
    PROMPTS,
    StepMetrics,
    TrainConfig,
    TrainingError,
    batch_indices,
    load_trained_encoder,
    train,
)
from tests.conftest import AUDIO

SMALL = TrainConfig(
    width=8,  # narrowed ResNet-18: seconds on a CPU instead of minutes
    steps=16,
    batch_size=4,
    checkpoint_every=6,
    val_every=8,
    log_every=2,
    prompt_variants=4,
    seed=3,
)
COPY_AT_STEP = 8  # the interrupted copy: last.pt of step 6 plus log lines of steps 7-8


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    return random_clip(0)


@pytest.fixture(scope="module")
def clips(one_thread: None) -> ClipDataset:
    """The eight fixture clips plus one missing file, inputs computed once."""
    records = folder_records(AUDIO) + [ClipRecord(AUDIO / "not-there.wav", "wind")]
    dataset = ClipDataset(records, cache=True)
    for i in range(len(dataset)):
        dataset[i]
    return dataset


@dataclass
class Runs:
    full: Path  # the uninterrupted run
    interrupted: Path  # a copy of the run folder as a crash after step 8 would leave it
    losses: list[float]
    skipped: list[str]
    best_step: int | None


@pytest.fixture(scope="module")
def runs(clip: FrozenClip, clips: ClipDataset, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("runs")
    full, interrupted = root / "full", root / "interrupted"
    losses: list[float] = []

    def on_step(m: StepMetrics) -> None:
        losses.append(m.loss)
        if m.step == COPY_AT_STEP:
            shutil.copytree(full, interrupted)

    result = train(SMALL, clip, clips, full, val_set=clips, on_step=on_step)
    assert result.steps == SMALL.steps
    return Runs(full, interrupted, losses, result.skipped, result.best_step)


def test_a_few_dozen_steps_lower_the_loss(runs: Runs) -> None:
    assert len(runs.losses) == SMALL.steps
    third = SMALL.steps // 3
    first, last = runs.losses[:third], runs.losses[-third:]
    assert sum(last) / third < 0.85 * sum(first) / third, runs.losses
    log = [json.loads(line) for line in (runs.full / METRICS).read_text().splitlines()]
    train_lines = [e for e in log if "loss" in e]
    assert [e["step"] for e in train_lines] == list(range(2, SMALL.steps + 1, 2))
    assert {"audio_text", "audio_view", "lr", "clips_per_s", "skipped"} <= set(train_lines[0])
    val_lines = [e for e in log if "val_loss" in e]
    assert [e["step"] for e in val_lines] == [8, 16]
    assert all(0.0 <= e["val_zero_shot"] <= 1.0 and e["val_clips"] == 8 for e in val_lines)
    lrs = [e["lr"] for e in train_lines]
    assert max(lrs) > 10 * min(lrs)  # the cyclic schedule moves the learning rate


def test_unreadable_clips_are_skipped_and_reported(runs: Runs) -> None:
    assert runs.skipped == [str(AUDIO / "not-there.wav")]
    log = [json.loads(line) for line in (runs.full / METRICS).read_text().splitlines()]
    assert log[-2]["skipped"] == 1


def test_run_folder_contents(runs: Runs, clips: ClipDataset) -> None:
    for name in (LAST, BEST, ENCODER, METRICS, CONFIG, PROMPTS):
        assert (runs.full / name).is_file(), name
    config = json.loads((runs.full / CONFIG).read_text())
    assert config["steps"] == 16 and config["step_size_up"] == 11  # 5 epochs of 9 clips / 4
    prompts = json.loads((runs.full / PROMPTS).read_text())
    assert prompts["explosion"][0] == "explosion" and len(prompts["explosion"]) > 1
    best = torch.load(runs.full / BEST, weights_only=True)
    assert best["step"] == runs.best_step
    encoder = torch.load(runs.full / ENCODER, weights_only=True)
    assert all(torch.equal(encoder[k], best["state_dict"][k]) for k in encoder)


def test_resume_reproduces_the_uninterrupted_run_exactly(
    runs: Runs, clip: FrozenClip, clips: ClipDataset
) -> None:
    assert torch.load(runs.interrupted / LAST, weights_only=True)["step"] == 6
    result = train(SMALL, clip, clips, runs.interrupted, val_set=clips, resume=True)
    assert result.steps == SMALL.steps
    a = torch.load(runs.full / LAST, weights_only=True)
    b = torch.load(runs.interrupted / LAST, weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:  # weights and batch-norm statistics, bit for bit
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    momenta_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    momenta_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(momenta_a, momenta_b, strict=True))
    assert a["scheduler"] == b["scheduler"] and a["best"] == b["best"]
    log_a = [json.loads(line) for line in (runs.full / METRICS).read_text().splitlines()]
    log_b = [json.loads(line) for line in (runs.interrupted / METRICS).read_text().splitlines()]
    volatile = {"time", "clips_per_s"}
    strip = [
        [{k: v for k, v in e.items() if k not in volatile} for e in log] for log in (log_a, log_b)
    ]
    assert strip[0] == strip[1]  # lines past the checkpoint were replaced, none repeated


def test_runs_refuse_to_overwrite_or_to_change_settings(
    runs: Runs, clip: FrozenClip, clips: ClipDataset, tmp_path: Path
) -> None:
    with pytest.raises(TrainingError, match="already holds a run"):
        train(SMALL, clip, clips, runs.full)
    with pytest.raises(TrainingError, match="batch_size: 4 -> 2"):
        train(replace(SMALL, batch_size=2, steps=20), clip, clips, runs.full, resume=True)
    fewer = ClipDataset(clips.records[:-1], cache=True)
    with pytest.raises(TrainingError, match="clips or labels differ"):
        train(replace(SMALL, steps=20), clip, fewer, runs.full, resume=True)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(SMALL, clip, clips, tmp_path / "empty", resume=True)


def test_narrow_encoders_load_only_through_the_training_loader(
    runs: Runs, clips: ClipDataset
) -> None:
    with pytest.raises(AudioEncoderError):
        load_audio_encoder(runs.full / LAST)
    encoder = load_trained_encoder(runs.full / LAST)
    x = clips[0][1]
    assert x is not None
    assert encoder(x[None]).shape == (1, 512)


def test_trained_full_width_encoder_loads_in_the_service(
    clip: FrozenClip, clips: ClipDataset, tmp_path: Path
) -> None:
    config = TrainConfig(steps=1, batch_size=4, prompt_variants=1, self_supervised=False)
    result = train(config, clip, clips, tmp_path)
    trained = torch.load(result.encoder_path, weights_only=True)
    for path in (result.encoder_path, tmp_path / LAST):
        encoder = load_audio_encoder(path)
        assert encoder.arch == "resnet18" and encoder.embed_dim == 512
        loaded = encoder.state_dict()
        assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    initial = load_trained_encoder(result.encoder_path)
    assert not initial.training and not any(p.requires_grad for p in initial.parameters())


def test_batches_walk_through_a_fresh_permutation_each_epoch() -> None:
    epoch0 = [i for step in range(3) for i in batch_indices(9, 3, seed=1, step=step)]
    epoch1 = [i for step in range(3, 6) for i in batch_indices(9, 3, seed=1, step=step)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(9)) and epoch0 != epoch1
    assert batch_indices(9, 3, seed=1, step=4) == batch_indices(9, 3, seed=1, step=4)
    assert batch_indices(9, 3, seed=2, step=0) != batch_indices(9, 3, seed=1, step=0)
    crossing = batch_indices(9, 4, seed=1, step=2)  # samples 8..11 cross into epoch 1
    assert crossing == epoch0[8:] + epoch1[:3]
