"""The Eq. 2 optimiser: LR schedule golden, edits on small random models, joint audio + text."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.audio_encoder import random_audio_encoder
from models.clip import FrozenClip, clip_loss
from models.engine import EditEngine
from models.identity import IdentityLoss
from models.optimize import (
    EditCanceled,
    EditConfig,
    StepInfo,
    _synthesis_fn,
    edit,
    lr_schedule,
    mix_latents,
    optimize_latent,
    start_from_seed,
)
from models.profiles import PROFILES
from models.stylegan2 import Generator, random_generator
from tests.conftest import GOLDEN
from tests.models.conftest import SMALL_RES, unit_vector

RES = SMALL_RES
STEPS = 15
FAST = EditConfig(steps=STEPS, lr=0.1, lambda_l2=0.0, lambda_id=0.0, preview_every=5)


@pytest.fixture(scope="module")
def w_source(generator: Generator) -> torch.Tensor:
    return start_from_seed(generator, seed=5)


def test_lr_schedule_matches_golden() -> None:
    golden = np.load(GOLDEN / "lr_schedule_300_steps_lr0.1.npy")
    ours = np.array([lr_schedule(i / 300, 0.1) for i in range(300)])
    assert golden.shape == (300,)
    np.testing.assert_allclose(ours, golden, rtol=0, atol=1e-7)


def test_edit_config_validation() -> None:
    bad: list[dict[str, Any]] = [
        {"steps": 0},
        {"lr": 0.0},
        {"lambda_l2": -1.0},
        {"lambda_id": float("nan")},
        {"text_mode": "concat"},
        {"mix_layer_split": 0},
        {"clip_preprocess": "crop"},
        {"clip_loss_mode": "logits"},
        {"noise_mode": "fresh"},
        {"preview_every": -1},
        {"lr_rampup": 0.0},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            EditConfig(**kwargs)
    config = EditConfig()
    assert (config.steps, config.lr, config.lambda_l2, config.lambda_id) == (
        300,
        0.05,
        0.008,
        0.005,
    )
    assert [config.layer_split(n) for n in (18, 14, 10)] == [9, 7, 5]
    assert EditConfig(mix_layer_split=3).layer_split(10) == 3
    with pytest.raises(ValueError):
        EditConfig(mix_layer_split=10).layer_split(10)


def test_start_from_seed(generator: Generator) -> None:
    torch.manual_seed(123)
    a = start_from_seed(generator, seed=7)
    torch.manual_seed(456)
    b = start_from_seed(generator, seed=7)
    assert a.shape == (1, generator.n_latent, generator.w_dim)
    assert torch.equal(a, b)
    assert torch.equal(a, a[:, :1].expand_as(a))  # one w on every layer
    assert not torch.equal(a, start_from_seed(generator, seed=8))
    z = torch.randn(1, generator.z_dim, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[:, 0], generator.mapping(z, truncation=0.7))


def test_short_edit_lowers_clip_loss_and_freezes_networks(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    target = unit_vector(3)
    steps: list[StepInfo] = []
    result = optimize_latent(generator, clip, target, w_source, FAST, on_step=steps.append)
    with torch.no_grad():
        before = clip_loss(clip.encode_image(generator.synthesis(w_source)), target)
        after = clip_loss(clip.encode_image(result.image), target)
    assert after.item() < before.item() - 0.01
    assert len(result.losses) == STEPS and [s.step for s in steps] == list(range(STEPS))
    assert [s.step for s in steps if s.preview] == [0, 5, 10, 14]
    assert steps[0].lr == 0.0 and steps[0].identity is None
    assert steps[0].image.shape == (1, 3, RES, RES) and not steps[0].image.requires_grad
    assert steps[-1].progress == 1.0
    assert result.w.shape == w_source.shape and not result.w.requires_grad
    for module in (generator, clip):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())


def test_lambda_l2_controls_distance(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    target = unit_vector(3)
    tight = dataclasses.replace(FAST, lambda_l2=0.05)
    loose = dataclasses.replace(FAST, lambda_l2=1e-5)
    d_tight = (optimize_latent(generator, clip, target, w_source, tight).w - w_source).norm()
    d_loose = (optimize_latent(generator, clip, target, w_source, loose).w - w_source).norm()
    assert d_tight < 0.5 * d_loose


def test_repeat_is_bit_identical(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    config = dataclasses.replace(FAST, steps=5, lambda_l2=0.008)
    first = optimize_latent(generator, clip, unit_vector(4), w_source, config)
    second = optimize_latent(generator, clip, unit_vector(4), w_source, config)
    assert torch.equal(first.w, second.w) and torch.equal(first.image, second.image)
    assert first.losses == second.losses


def test_should_cancel_stops(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    seen: list[int] = []
    with pytest.raises(EditCanceled) as info:
        optimize_latent(
            generator,
            clip,
            unit_vector(3),
            w_source,
            FAST,
            on_step=lambda s: seen.append(s.step),
            should_cancel=lambda: len(seen) >= 3,
        )
    assert info.value.step == 3 and seen == [0, 1, 2]


def test_identity_runs_only_when_weighted(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor, identity: IdentityLoss
) -> None:
    calls = []
    hook = identity.facenet.register_forward_hook(lambda *_: calls.append(1))
    try:
        config = dataclasses.replace(FAST, steps=2, lambda_id=0.0)
        optimize_latent(generator, clip, unit_vector(3), w_source, config, identity=identity)
        assert calls == []
        infos: list[StepInfo] = []
        config = dataclasses.replace(config, lambda_id=0.5)
        optimize_latent(
            generator,
            clip,
            unit_vector(3),
            w_source,
            config,
            identity=identity,
            on_step=infos.append,
        )
        assert len(calls) == 1 + 2  # source features once, then one per step
        assert all(i.identity is not None for i in infos)
        assert all(not p.requires_grad and p.grad is None for p in identity.parameters())
    finally:
        hook.remove()


def test_text_mix_takes_layers_from_each_run(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    config = dataclasses.replace(FAST, steps=4, lambda_l2=0.001)
    audio, text = unit_vector(3), unit_vector(9)
    phases: list[tuple[str, int]] = []
    result = edit(
        generator,
        clip,
        audio,
        w_source,
        config,
        text_emb=text,
        on_step=lambda s: phases.append((s.phase, s.phase_index)),
    )
    by_audio = optimize_latent(generator, clip, audio, w_source, config).w
    by_text = optimize_latent(generator, clip, text, w_source, config).w
    split = config.layer_split(generator.n_latent)
    assert split == 5
    assert torch.equal(result.w[:, :split], by_audio[:, :split])
    assert torch.equal(result.w[:, split:], by_text[:, split:])
    assert torch.equal(result.w, mix_latents(by_audio, by_text, split))
    assert phases == [("audio", 0)] * 4 + [("text", 1)] * 4
    report = result.report
    assert report["runs"] == 2 and report["steps"] == 8 and report["mix_layer_split"] == split
    assert {"clip_text_before", "clip_text_after"} <= set(report)
    assert report["latent_l2"] == pytest.approx(float((result.w - w_source).norm()))


def test_text_sum_and_report(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor, identity: IdentityLoss
) -> None:
    config = dataclasses.replace(FAST, steps=3, text_mode="sum", text_weight=0.5)
    audio, text = unit_vector(3), unit_vector(9)
    result = edit(generator, clip, audio, w_source, config, text_emb=text, identity=identity)
    both = torch.stack([audio, text])
    direct = optimize_latent(generator, clip, both, w_source, config, weights=(1.0, 0.5))
    assert torch.equal(result.w, direct.w) and torch.equal(result.image, direct.image)
    report = result.report
    assert report["runs"] == 1 and report["text_mode"] == "sum"
    assert report["mix_layer_split"] is None
    with torch.no_grad():
        expected = F.cosine_similarity(clip.encode_image(result.image), audio[None]).item()
    assert report["clip_audio_after"] == pytest.approx(expected, abs=1e-6)
    assert -1.0 <= report["identity_similarity"] <= 1.0 + 1e-6
    assert report["seconds"] > 0


def test_audio_only_report_has_no_text_keys(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    result = edit(generator, clip, unit_vector(3), w_source, dataclasses.replace(FAST, steps=2))
    assert result.report["text_mode"] is None and "clip_text_after" not in result.report
    assert "identity_similarity" not in result.report
    assert result.image.shape == result.source_image.shape == (1, 3, RES, RES)
    with pytest.raises(ValueError):
        edit(generator, clip, unit_vector(3), w_source[:, :3], FAST)


def test_precision_and_compile_settings_are_checked() -> None:
    assert (EditConfig().precision, EditConfig().compile_mode) == ("fp32", None)
    with pytest.raises(ValueError, match="precision"):
        EditConfig(precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compile_mode"):
        EditConfig(compile_mode="fastest")


def test_bf16_autocast_stays_within_35_db_of_fp32(
    generator: Generator, clip: FrozenClip, w_source: torch.Tensor
) -> None:
    """The GPU path's autocast, exercised on CPU: same edit, image PSNR >= 35 dB vs fp32."""
    config = dataclasses.replace(FAST, steps=5, lr=0.05, lambda_l2=0.008)
    fp32 = optimize_latent(generator, clip, unit_vector(3), w_source, config)
    bf16 = optimize_latent(
        generator, clip, unit_vector(3), w_source, dataclasses.replace(config, precision="bf16")
    )
    assert bf16.w.dtype == torch.float32 and bf16.image.dtype == torch.float32
    with torch.no_grad():
        source = generator.synthesis(w_source)
    assert _psnr(fp32.image, source) < 30  # the edit changed the image ...
    assert _psnr(bf16.image, fp32.image) >= 35  # ... and bf16 lands where fp32 does


# Compiled vs eager, after 4 steps. Inductor's convolutions round differently from NNPACK's
# Winograd, and Adam turns rounding-level gradients into steps of up to lr (see test_batched).
COMPILE_W_REL_TOL = 0.03  # ||w_compiled - w_eager|| / ||w_eager - w_source||
COMPILE_IMAGE_TOL = 2e-2  # max pixel difference in [-1, 1]


@pytest.mark.slow
def test_compiled_generator_edits_like_eager(clip: FrozenClip) -> None:
    """``compile_mode`` (torch.compile, inductor) on a small generator: tracing must route
    around ops it cannot trace (NNPACK), and the compiled edit must land where eager does."""
    generator = random_generator(32, 64, seed=1)  # 32 px x 64 channels: NNPACK territory
    w_source = start_from_seed(generator, seed=5)
    config = dataclasses.replace(FAST, steps=4, lambda_l2=0.008)
    eager = optimize_latent(generator, clip, unit_vector(3), w_source, config)
    compiled_config = dataclasses.replace(config, compile_mode="default")
    compiled = optimize_latent(generator, clip, unit_vector(3), w_source, compiled_config)
    moved = float((eager.w - w_source).norm())
    assert moved > 0.1  # the edit moved
    assert float((compiled.w - eager.w).norm()) <= COMPILE_W_REL_TOL * moved
    assert float((compiled.image - eager.image).abs().max()) <= COMPILE_IMAGE_TOL
    kept = _synthesis_fn(generator, "default")
    assert kept is _synthesis_fn(generator, "default")  # later edits reuse the compiled graph
    assert kept is not generator.synthesis
    engine = EditEngine(
        PROFILES["smoke"], generator, clip, random_audio_encoder(seed=0), None,
        torch.device("cpu"), compile_mode="default",
    )  # fmt: skip
    assert engine.warm_up() > 0  # what a worker runs at start with SOUNDEDIT_COMPILE_MODE set


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [-1, 1], over the [0, 1] range."""
    mse = float((((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1 / mse)
