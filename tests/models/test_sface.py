"""SFace in PyTorch: conversion error, identity similarities, gradients, alignment helpers."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

from models.align import align_face, crop_center
from models.face_detect import load_face_detector
from models.identity import IdentityLoss
from models.onnx_weights import SFACE, bundled_model, dequantize
from models.sface import (
    ARCFACE_TEMPLATE,
    EMBED_DIM,
    GENERATOR_CROP,
    INPUT_SIZE,
    SFaceIdentity,
    arcface_crop,
    load_sface_identity,
    similarity_transform,
)
from tests.conftest import IMAGES
from tests.models.onnx_reference import reference_session

RESOLUTION = 256
CONVERSION_TOLERANCE = 1e-4  # raw 128-d features (magnitudes up to ~4), vs onnxruntime
SAME_FACE_MIN = 0.9  # cosine of the astronaut vs a shifted / mirrored copy
OTHER_MAX = 0.3  # cosine of the astronaut vs a cat or a cup
ROUTES_MIN = 0.85  # OpenCV-style crop of the photo vs the fixed crop of the aligned image


def to_tensor(image: Image.Image) -> Tensor:
    """RGB image -> (1, 3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    return pixels / 127.5 - 1.0


@pytest.fixture(scope="module")
def identity(one_thread: None) -> Iterator[SFaceIdentity]:
    yield load_sface_identity()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(IMAGES / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def aligned(photo: Image.Image) -> Tensor:
    return to_tensor(align_face(photo, RESOLUTION, detector=load_face_detector()).image)


def test_blockwise_dequantize() -> None:
    q = np.array([[1, 2, 3, 4, 5]], dtype=np.int8)  # two blocks of 2, one short block of 1
    scale = np.array([[0.5, 2.0, 10.0]], dtype=np.float32)
    zero = np.array([[1, 0, 5]], dtype=np.int8)
    out = dequantize(q, scale, zero, axis=1, block_size=2)
    np.testing.assert_allclose(out, [[0.0, 0.5, 6.0, 8.0, 0.0]])
    np.testing.assert_allclose(dequantize(q, np.array([0.5], np.float32), None), q * 0.5)


def test_conversion_matches_onnxruntime(identity: SFaceIdentity, photo: Image.Image) -> None:
    session = reference_session(bundled_model(SFACE), "data")
    face = load_face_detector().detect(photo)[0]
    crop = arcface_crop(
        torch.from_numpy(np.array(photo, np.float32)).permute(2, 0, 1)[None], face.landmarks
    )
    noise = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    for batch in (crop, noise * 255):
        reference = session.run(None, {"data": batch.numpy()})[0]
        with torch.no_grad():
            ours = identity.facenet(batch).numpy()
        assert ours.shape == reference.shape == (1, EMBED_DIM)
        assert np.abs(ours - reference).max() < CONVERSION_TOLERANCE


def test_same_face_scores_high_and_others_low(identity: SFaceIdentity, aligned: Tensor) -> None:
    shifted = torch.roll(aligned, shifts=(4, 4), dims=(2, 3))
    mirrored = torch.flip(aligned, dims=[3])
    cat = to_tensor(crop_center(Image.open(IMAGES / "chelsea.png"), RESOLUTION))
    cup = to_tensor(crop_center(Image.open(IMAGES / "coffee.png"), RESOLUTION))
    same = identity.similarity(aligned.repeat(2, 1, 1, 1), torch.cat([shifted, mirrored]))
    other = identity.similarity(aligned.repeat(2, 1, 1, 1), torch.cat([cat, cup]))
    assert (same > SAME_FACE_MIN).all(), same
    assert (other < OTHER_MAX).all(), other
    loss = identity(torch.cat([shifted, cat]), aligned.repeat(2, 1, 1, 1))
    assert loss.ndim == 0 and 0 < float(loss) < 2


def test_fixed_crop_agrees_with_opencv_style_alignment(
    identity: SFaceIdentity, photo: Image.Image, aligned: Tensor
) -> None:
    face = load_face_detector().detect(photo)[0]
    pixels = torch.from_numpy(np.array(photo, np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        from_photo = identity.crop_features(arcface_crop(pixels, face.landmarks))
    assert float((from_photo * identity.features(aligned)).sum()) > ROUTES_MIN


def test_gradients_reach_the_input(identity: SFaceIdentity, aligned: Tensor) -> None:
    assert isinstance(identity, IdentityLoss)  # accepted wherever the optimiser takes one
    with torch.no_grad():
        target = identity.features(aligned)
    image = torch.roll(aligned, shifts=(3, 0), dims=(2, 3)).clone().requires_grad_(True)
    identity.loss_from_features(image, target).sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()
    left, top = round(GENERATOR_CROP[0] * RESOLUTION), round(GENERATOR_CROP[1] * RESOLUTION)
    inside = image.grad[..., top + 10 : top + 100, left + 10 : left + 100]
    assert inside.abs().sum() > 0
    assert image.grad[..., :top, :].abs().sum() == 0  # above the face crop: no influence
    assert all(0.1 < c < 0.9 for c in GENERATOR_CROP)


def test_generator_sized_images(identity: SFaceIdentity) -> None:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    feats = identity.features(images)
    assert feats.shape == (2, EMBED_DIM)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2))


def test_similarity_transform_recovers_a_known_one() -> None:
    angle, scale, shift = np.radians(12.0), 2.5, np.array([40.0, -7.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE
    dst = src @ (scale * rotation).T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)
