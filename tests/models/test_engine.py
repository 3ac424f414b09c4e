"""The edit engine on the smoke profile: what the worker and ``soundedit edit`` run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from cli.main import main
from models.audio_encoder import random_audio_encoder
from models.engine import EditEngine, EditOptions, EditOutput, EditRequest
from models.optimize import EditCanceled
from models.profiles import PROFILES
from tests.conftest import AUDIO

STEPS = 6
BATCH_W_REL_TOL = 0.03  # ||w_batched - w_alone|| / ||w_alone - w_source|| (see test_batched)
BATCH_PIXEL_TOL = 3  # uint8 levels: test_batched's 2e-2 of the [-1, 1] range, rounded up


@pytest.fixture(scope="module")
def engine() -> EditEngine:
    return EditEngine.load(PROFILES["smoke"], cache_dir=Path("/nonexistent"), device="cpu")


def run(engine: EditEngine, **overrides: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "seed": 3, "steps": STEPS, "lr": 0.05, "lambda_l2": 0.008, "lambda_id": 0.0,
        "truncation": 0.7,
    }  # fmt: skip
    args.update(overrides)
    return engine.edit((AUDIO / "explosion.wav").read_bytes(), **args)  # type: ignore[arg-type]


def test_edit_is_bit_identical_when_repeated(engine: EditEngine) -> None:
    first, second = run(engine), run(engine)
    assert np.array_equal(first.result, second.result)
    assert np.array_equal(first.latent, second.latent)
    assert first.result.shape == (64, 64, 3) and first.result.dtype == np.uint8
    assert not np.array_equal(first.result, first.source)


def test_progress_reaches_every_step(engine: EditEngine) -> None:
    seen: list[tuple[int, int]] = []
    previews: list[np.ndarray] = []

    def on_step(phase: str, step: int, total: int, preview: np.ndarray | None) -> None:
        assert phase == "editing"
        seen.append((step, total))
        if preview is not None:
            previews.append(preview)

    run(engine, on_step=on_step)
    assert seen == [(i, STEPS) for i in range(1, STEPS + 1)]
    assert previews and previews[0].shape == (64, 64, 3) and previews[0].dtype == np.uint8


def test_latent_source_round_trips(engine: EditEngine) -> None:
    by_seed = run(engine)
    start = engine.start_latent(3, None, 0.7)[0].numpy()
    by_latent = run(engine, seed=None, latent=start)
    assert np.array_equal(by_seed.latent, by_latent.latent)
    with pytest.raises(ValueError, match="shape"):
        run(engine, seed=None, latent=np.zeros((3, 512), np.float32))


def test_upstream_clip_mode_is_a_different_loss(engine: EditEngine) -> None:
    paper, upstream = run(engine), run(engine, clip_mode="upstream")
    assert upstream.report["clip_mode"] == "upstream"
    assert not np.array_equal(paper.latent, upstream.latent)
    with pytest.raises(ValueError, match="clip_mode"):
        run(engine, clip_mode="other")


def test_a_batch_gives_each_edit_its_own_result(engine: EditEngine) -> None:
    """Five edits in one call: two without text batched together, one with text, one with an
    undecodable clip and one canceled; each outcome is what the edit gives alone."""
    clip = {name: (AUDIO / f"{name}.wav").read_bytes() for name in ("explosion", "fire", "raining")}
    steps_of_4: list[int] = []
    requests = [
        EditRequest(clip["explosion"], seed=3, truncation=0.7),
        EditRequest(clip["fire"], seed=4, truncation=0.7, text="a burning house"),
        EditRequest(b"not a sound", seed=5),
        EditRequest(clip["raining"], seed=6, truncation=0.7),
        EditRequest(
            clip["fire"], seed=7, truncation=0.7,
            on_step=lambda _phase, step, _steps, _preview: steps_of_4.append(step),
            should_cancel=lambda: len(steps_of_4) >= 2,
        ),
    ]  # fmt: skip
    options = EditOptions(steps=STEPS, lr=0.05, lambda_l2=0.008, lambda_id=0.0)
    outcomes = engine.edit_batch(requests, options)
    assert len(outcomes) == 5
    assert isinstance(outcomes[2], ValueError)
    assert isinstance(outcomes[4], EditCanceled) and steps_of_4 == [1, 2]
    for i, batch_size in ((0, 3), (1, 1), (3, 3)):
        batched = outcomes[i]
        assert isinstance(batched, EditOutput)
        assert batched.report["batch_size"] == batch_size
        request = requests[i]
        alone = engine.edit(
            request.audio, seed=request.seed, text=request.text, steps=STEPS, lr=0.05,
            lambda_l2=0.008, lambda_id=0.0, truncation=0.7,
        )  # fmt: skip
        moved = np.linalg.norm(
            alone.latent - engine.start_latent(request.seed, None, 0.7)[0].numpy()
        )
        assert np.linalg.norm(batched.latent - alone.latent) <= BATCH_W_REL_TOL * moved
        pixels = np.abs(batched.result.astype(int) - alone.result.astype(int)).max()
        assert pixels <= BATCH_PIXEL_TOL


def test_public_helpers_are_exported() -> None:
    assert models.audio_input.__module__ == "models.audio"
    assert models.load_audio_encoder.__module__ == "models.audio_encoder"
    assert models.load_generator.__module__ == "models.checkpoints"


def test_cli_edit_writes_outputs(tmp_path: Path) -> None:
    argv = ["edit", str(AUDIO / "wind.wav"), "--seed", "1", "--steps", "3", "--profile", "smoke"]
    assert main([*argv, "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {
        "result.png",
        "source.png",
        "latent.npy",
        "report.json",
    }
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["steps"] == 3 and report["profile"] == "smoke"
    assert np.load(tmp_path / "latent.npy").shape == (10, 512)


def test_cli_edit_takes_the_precision(tmp_path: Path) -> None:
    argv = ["edit", str(AUDIO / "wind.wav"), "--seed", "1", "--steps", "2", "--profile", "smoke"]
    assert main([*argv, "--device", "cpu", "--precision", "bf16", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["precision"] == "bf16"


def test_a_trained_audio_encoder_replaces_the_profiles(tmp_path: Path) -> None:
    trained = random_audio_encoder(
        seed=7
    )  # stands for `soundedit train`'s encoder.pt: a plain state dict
    torch.save(trained.state_dict(), tmp_path / "encoder.pt")
    engine = EditEngine.load(
        PROFILES["smoke"], cache_dir=tmp_path, device="cpu", audio_encoder=tmp_path / "encoder.pt"
    )
    for name, value in trained.state_dict().items():
        assert torch.equal(engine.audio_encoder.state_dict()[name], value), name


def test_lpips_serves_inversion_once_its_files_are_cached(tmp_path: Path) -> None:
    from models.engine import _load_lpips
    from models.perceptual import LPIPS, LPIPS_CHANNELS, vgg16_features
    from models.weights import LPIPS_LINEAR, LPIPS_VGG16, profile_files

    files = {wf.role: wf for wf in profile_files("ffhq")}
    assert _load_lpips(files, tmp_path) is None  # nothing cached: the weight-free loss stands in
    torch.save(
        {f"features.{k}": v for k, v in vgg16_features().state_dict().items()},
        tmp_path / LPIPS_VGG16.filename,
    )
    torch.save(
        {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)},
        tmp_path / LPIPS_LINEAR.filename,
    )
    assert isinstance(_load_lpips(files, tmp_path), LPIPS)
