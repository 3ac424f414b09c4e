"""Batched edits: B edits optimised together give each edit its unbatched result.

The batched loss is the sum of per-edit losses (each with its own L2 and CLIP terms), so each
latent's gradient is its own and Adam's elementwise update matches the single-edit run. Only
float rounding differs (batched GEMMs and convolutions sum in another order). Adam divides each
gradient element by its own magnitude, so an element whose gradient is at rounding level can
take a step of a different sign, up to ``lr`` away: that touches a handful of float32 elements
the loss hardly depends on. Hence two checks: in float64, where rounding is far below Adam's
eps, the latents agree elementwise (W64_TOL); in float32, the images agree (IMAGE_TOL) and the
latents agree in norm (W32_REL_TOL of the edit's displacement).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from models.clip import FrozenClip
from models.identity import IdentityLoss
from models.optimize import (
    EditCanceled,
    EditConfig,
    EditResult,
    LatentOptimizer,
    OptimizeResult,
    StepInfo,
    edit,
    edit_batch,
    optimize_latent,
    optimize_latents,
    start_from_seed,
)
from models.stylegan2 import Generator, random_generator
from tests.models.conftest import SMALL_RES, unit_vector

RES = SMALL_RES
STEPS = 6
CONFIG = EditConfig(steps=STEPS, lr=0.1, lambda_l2=0.008, lambda_id=0.0, preview_every=2)
W64_TOL = 1e-3  # float64: max |w_batched - w_single| (lr = 0.1: no element stepped otherwise)
IMAGE64_TOL = 1e-4  # float64: max pixel difference, images in [-1, 1]
W32_REL_TOL = 0.03  # float32: ||w_batched - w_single|| / ||w_single - w_source||
IMAGE_TOL = 2e-2  # float32: max pixel difference (5 / 255 of the [-1, 1] range)
LOSS_TOL = 1e-3  # float32: per-step total loss, relative

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def generator64(generator: Generator) -> Generator:
    return copy.deepcopy(generator).double()


@pytest.fixture(scope="module")
def clip64(clip: FrozenClip) -> FrozenClip:
    return copy.deepcopy(clip).double()


def _sources(generator: Generator, seeds: tuple[int, ...]) -> torch.Tensor:
    """(B, n_latent, w_dim) seeded starts, in the generator's dtype."""
    dtype = next(generator.parameters()).dtype  # type: ignore[attr-defined]
    starts = [start_from_seed(generator, s) for s in seeds] if dtype == torch.float32 else []
    if not starts:  # mapping runs in float32 (z is drawn in float32); cast the starts after
        reference = random_generator(RES, 64, seed=1)
        starts = [start_from_seed(reference, s) for s in seeds]
    return torch.cat(starts).to(dtype)


def _finished(outcomes: list[OptimizeResult | EditCanceled]) -> list[OptimizeResult]:
    """The results of a batch in which no edit was canceled."""
    assert all(isinstance(o, OptimizeResult) for o in outcomes)
    return [o for o in outcomes if isinstance(o, OptimizeResult)]


def _assert_same_edit(batched: torch.Tensor, single: torch.Tensor, source: torch.Tensor) -> None:
    """Latents (1, n_latent, w_dim) of one edit, batched and alone."""
    moved = float((single - source).norm())
    assert moved > 0.1  # the edit really moved the latent
    if single.dtype == torch.float64:
        assert float((batched - single).abs().max()) <= W64_TOL
    else:
        assert float((batched - single).norm()) <= W32_REL_TOL * moved


def test_batched_equals_unbatched_float64(generator64: Generator, clip64: FrozenClip) -> None:
    sources = _sources(generator64, (5, 6, 7))
    # Edit 1 has two weighted targets, so the per-edit target tables differ in length.
    targets = [unit_vector(3), torch.stack([unit_vector(4), unit_vector(8)]), unit_vector(9)]
    weights = [[1.0], [1.0, 0.5], [1.0]]
    batched = _finished(
        optimize_latents(generator64, clip64, targets, sources, CONFIG, weights=weights)
    )
    assert len(batched) == 3
    for b in range(3):
        single = optimize_latent(
            generator64, clip64, targets[b], sources[b : b + 1], CONFIG, weights=weights[b]
        )
        assert batched[b].w.dtype == torch.float64
        _assert_same_edit(batched[b].w, single.w, sources[b : b + 1])
        assert float((batched[b].image - single.image).abs().max()) <= IMAGE64_TOL


def test_batched_matches_unbatched_float32(generator: Generator, clip: FrozenClip) -> None:
    sources = _sources(generator, (5, 6, 7))
    targets = [unit_vector(3), torch.stack([unit_vector(4), unit_vector(8)]), unit_vector(9)]
    weights = [[1.0], [1.0, 0.5], [1.0]]
    batched = _finished(
        optimize_latents(generator, clip, targets, sources, CONFIG, weights=weights)
    )
    for b in range(3):
        single = optimize_latent(
            generator, clip, targets[b], sources[b : b + 1], CONFIG, weights=weights[b]
        )
        _assert_same_edit(batched[b].w, single.w, sources[b : b + 1])
        assert batched[b].w.shape == single.w.shape == (1, generator.n_latent, generator.w_dim)
        assert float((batched[b].image - single.image).abs().max()) <= IMAGE_TOL
        torch.testing.assert_close(
            torch.tensor(batched[b].losses), torch.tensor(single.losses), rtol=LOSS_TOL, atol=0
        )


def test_batched_with_identity_equals_unbatched(
    generator: Generator, clip: FrozenClip, identity: IdentityLoss
) -> None:
    config = dataclasses.replace(CONFIG, steps=3, lambda_id=0.5)
    sources = _sources(generator, (5, 6))
    targets = torch.stack([unit_vector(3), unit_vector(4)])  # (B, D): one target per edit
    batched = _finished(
        optimize_latents(generator, clip, targets, sources, config, identity=identity)
    )
    for b in range(2):
        single = optimize_latent(
            generator, clip, targets[b], sources[b : b + 1], config, identity=identity
        )
        _assert_same_edit(batched[b].w, single.w, sources[b : b + 1])
        assert batched[b].losses[-1] == pytest.approx(single.losses[-1], rel=LOSS_TOL)


def test_loss_is_a_sum_of_per_edit_losses(generator64: Generator, clip64: FrozenClip) -> None:
    """Two copies of one edit each follow the single-edit trajectory; a CLIP term averaged
    over the batch next to an L2 term summed over it would weaken each edit's CLIP pull."""
    sources = _sources(generator64, (5, 5))
    both = _finished(
        optimize_latents(generator64, clip64, [unit_vector(3), unit_vector(3)], sources, CONFIG)
    )
    single = optimize_latent(generator64, clip64, unit_vector(3), sources[:1], CONFIG)
    for result in both:
        _assert_same_edit(result.w, single.w, sources[:1])
    optimizer = LatentOptimizer(
        generator64, clip64, [unit_vector(3), unit_vector(3)], sources, CONFIG
    )
    values = optimizer.step()
    assert values.loss[0] == pytest.approx(values.loss[1], rel=1e-6)
    assert values.loss[0] == pytest.approx(values.clip[0] + CONFIG.lambda_l2 * values.l2[0])
    assert values.images.shape == (2, 3, RES, RES)


def test_on_step_reports_every_edit(generator: Generator, clip: FrozenClip) -> None:
    sources = _sources(generator, (5, 6))
    infos: list[StepInfo] = []
    optimize_latents(
        generator, clip, [unit_vector(3), unit_vector(4)], sources, CONFIG, on_step=infos.append
    )
    assert [(i.step, i.edit_index) for i in infos] == [(s, b) for s in range(STEPS) for b in (0, 1)]
    assert all(i.image.shape == (1, 3, RES, RES) for i in infos)
    assert [i.step for i in infos if i.preview and i.edit_index == 0] == [0, 2, 4, 5]


def test_a_canceled_edit_leaves_the_batch(generator64: Generator, clip64: FrozenClip) -> None:
    """Edit 1 stops before step 2; edits 0 and 2 go on exactly as they would alone."""
    sources = _sources(generator64, (5, 6, 7))
    targets = [unit_vector(3), unit_vector(4), unit_vector(9)]
    infos: list[StepInfo] = []

    def stop_edit_1(b: int) -> bool:
        return b == 1 and sum(i.edit_index == 1 for i in infos) == 2

    outcomes = optimize_latents(
        generator64, clip64, targets, sources, CONFIG, on_step=infos.append,
        should_cancel=stop_edit_1, phase="audio",
    )  # fmt: skip
    canceled = outcomes[1]
    assert isinstance(canceled, EditCanceled)
    assert (canceled.step, canceled.phase) == (2, "audio")
    assert [i.step for i in infos if i.edit_index == 1] == [0, 1]
    assert [i.step for i in infos if i.edit_index == 2] == list(range(STEPS))
    for b in (0, 2):
        result = outcomes[b]
        assert isinstance(result, OptimizeResult)
        single = optimize_latent(generator64, clip64, targets[b], sources[b : b + 1], CONFIG)
        _assert_same_edit(result.w, single.w, sources[b : b + 1])
        assert result.losses == pytest.approx(
            single.losses, rel=1e-6
        )  # losses are reported in float32
    everyone = optimize_latents(
        generator64, clip64, targets, sources, CONFIG, should_cancel=lambda b: True
    )
    assert all(isinstance(o, EditCanceled) and o.step == 0 for o in everyone)


def test_a_mix_edit_canceled_in_its_sound_run_skips_its_text_run(
    generator64: Generator, clip64: FrozenClip
) -> None:
    config = dataclasses.replace(CONFIG, steps=3, text_mode="mix")
    sources = _sources(generator64, (5, 6))
    audio, text = (
        torch.stack([unit_vector(3), unit_vector(4)]),
        torch.stack([unit_vector(8), unit_vector(9)]),
    )
    infos: list[StepInfo] = []
    outcomes = edit_batch(
        generator64, clip64, audio, sources, config, text_embs=text, on_step=infos.append,
        should_cancel=lambda b: b == 0 and len(infos) >= 2,
    )  # fmt: skip
    assert isinstance(outcomes[0], EditCanceled) and outcomes[0].phase == "audio"
    assert {i.phase for i in infos if i.edit_index == 0} == {"audio"}
    assert [(i.phase, i.step) for i in infos if i.edit_index == 1] == [
        ("audio", 0), ("audio", 1), ("audio", 2), ("text", 0), ("text", 1), ("text", 2)
    ]  # fmt: skip
    survivor = outcomes[1]
    assert isinstance(survivor, EditResult)
    single = edit(generator64, clip64, audio[1], sources[1:], config, text_emb=text[1])
    _assert_same_edit(survivor.w, single.w, sources[1:])
    assert survivor.report["runs"] == 2


def test_a_mix_edit_canceled_in_its_sound_run_is_canceled(
    generator: Generator, clip: FrozenClip
) -> None:
    config = dataclasses.replace(CONFIG, text_mode="mix")
    steps: list[int] = []
    with pytest.raises(EditCanceled) as stopped:
        edit(
            generator, clip, unit_vector(3), _sources(generator, (5,)), config,
            text_emb=unit_vector(8), on_step=lambda info: steps.append(info.step),
            should_cancel=lambda: len(steps) == 1,
        )  # fmt: skip
    assert (stopped.value.step, stopped.value.phase) == (1, "audio")


@pytest.mark.parametrize("text_mode", ["mix", "sum"])
def test_edit_batch_equals_edit(generator64: Generator, clip64: FrozenClip, text_mode: str) -> None:
    config = dataclasses.replace(CONFIG, steps=3, text_mode=text_mode)  # type: ignore[arg-type]
    sources = _sources(generator64, (5, 6))
    audio = torch.stack([unit_vector(3), unit_vector(4)])
    text = torch.stack([unit_vector(8), unit_vector(9)])
    results = edit_batch(generator64, clip64, audio, sources, config, text_embs=text)
    for b in range(2):
        result = results[b]
        assert isinstance(result, EditResult)
        single = edit(generator64, clip64, audio[b], sources[b : b + 1], config, text_emb=text[b])
        _assert_same_edit(result.w, single.w, sources[b : b + 1])
        assert float((result.image - single.image).abs().max()) <= IMAGE64_TOL
        report, expected = result.report, single.report
        assert report.keys() == expected.keys()
        for key in ("clip_audio_after", "clip_text_after", "latent_l2"):
            assert report[key] == pytest.approx(expected[key], abs=1e-4)
        assert report["runs"] == expected["runs"] and report["steps"] == expected["steps"]


def test_batch_validation(generator: Generator, clip: FrozenClip) -> None:
    sources = _sources(generator, (5, 6))
    with pytest.raises(ValueError, match="targets for 2 edits"):
        optimize_latents(generator, clip, [unit_vector(3)], sources, CONFIG)
    with pytest.raises(ValueError, match="weight lists"):
        optimize_latents(
            generator, clip, [unit_vector(3), unit_vector(4)], sources, CONFIG, weights=[[1.0]]
        )
    with pytest.raises(ValueError, match="w_sources"):
        optimize_latents(generator, clip, [unit_vector(3)], sources[0], CONFIG)
    with pytest.raises(ValueError, match="audio_embs"):
        edit_batch(generator, clip, unit_vector(3)[None], sources, CONFIG)
