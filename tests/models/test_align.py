"""Face detection (YuNet in PyTorch) and FFHQ alignment on real photos."""

from __future__ import annotations

import io
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from models.align import (
    AlignedFace,
    FaceNotFound,
    align_face,
    crop_center,
    ffhq_frame,
)
from models.face_detect import FaceDetector, load_face_detector
from models.images import DEFAULT_MAX_PIXELS, load_image
from models.onnx_weights import YUNET, bundled_model
from tests.conftest import IMAGES
from tests.models.onnx_reference import reference_session

RESOLUTION = 256  # aligned output size used here
EYE_TOLERANCE_PX = 3.0  # re-detected vs template eye centres at 256 px (1.2 % of the side)
CONVERSION_TOLERANCE = 1e-4  # YuNet heads, PyTorch vs onnxruntime
CV2_LANDMARK_TOLERANCE_PX = 0.05  # our decoding vs OpenCV's FaceDetectorYN


@pytest.fixture(scope="module")
def detector(one_thread: None) -> Iterator[FaceDetector]:
    yield load_face_detector()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.open(IMAGES / "astronaut.png").convert("RGB")


@pytest.fixture(scope="module")
def aligned(astronaut: Image.Image, detector: FaceDetector) -> AlignedFace:
    return align_face(astronaut, RESOLUTION, detector=detector)


def test_yunet_matches_onnxruntime(astronaut: Image.Image, detector: FaceDetector) -> None:
    bgr = np.ascontiguousarray(np.asarray(astronaut)[:, :, ::-1].transpose(2, 0, 1))[None]
    session = reference_session(bundled_model(YUNET), "input")
    names = [o.name for o in session.get_outputs()]
    reference = dict(zip(names, session.run(None, {"input": bgr.astype(np.float32)}), strict=True))
    with torch.no_grad():
        ours = detector.net(torch.from_numpy(bgr).float())
    assert set(ours) == set(reference)
    worst = max(float(np.abs(ours[k].numpy() - reference[k]).max()) for k in reference)
    assert worst < CONVERSION_TOLERANCE


def test_decoding_matches_opencv(astronaut: Image.Image, detector: FaceDetector) -> None:
    bgr = np.ascontiguousarray(np.asarray(astronaut)[:, :, ::-1])
    opencv = cv2.FaceDetectorYN.create(str(bundled_model(YUNET)), "", (512, 512), 0.6, 0.3, 5000)
    _, rows = opencv.detect(bgr)
    ours = detector.detect(astronaut)
    assert rows is not None and len(rows) == len(ours) == 1
    np.testing.assert_allclose(
        ours[0].landmarks.ravel(), rows[0, 4:14], atol=CV2_LANDMARK_TOLERANCE_PX
    )
    np.testing.assert_allclose(ours[0].box, rows[0, :4], atol=CV2_LANDMARK_TOLERANCE_PX)
    assert ours[0].score == pytest.approx(float(rows[0, 14]), abs=1e-4)


def test_template_places_the_eyes(aligned: AlignedFace) -> None:
    """The transform itself: eye midpoint centred at the FFHQ height, eyes level."""
    lm = aligned.face.landmarks.astype(np.float64)
    eye_to_eye = np.hypot(*(lm[1] - lm[0]))
    eye_to_mouth = np.hypot(*((lm[3] + lm[4]) / 2 - (lm[0] + lm[1]) / 2))
    half = max(2.0 * eye_to_eye, 1.8 * eye_to_mouth)
    mid = aligned.aligned_landmarks[:2].mean(axis=0) + 0.5  # edge coordinates
    expected_y = RESOLUTION * (0.5 - 0.05 * eye_to_mouth / half)
    assert mid[0] == pytest.approx(RESOLUTION / 2, abs=1.0)  # tilt of em moves it slightly
    assert mid[1] == pytest.approx(expected_y, abs=1.0)
    distance = np.hypot(*(aligned.aligned_landmarks[1] - aligned.aligned_landmarks[0]))
    assert distance == pytest.approx(RESOLUTION * eye_to_eye / (2 * half), rel=1e-3)
    assert abs(aligned.aligned_landmarks[0, 1] - aligned.aligned_landmarks[1, 1]) < 2.0


def test_astronaut_eyes_land_on_the_template(aligned: AlignedFace, detector: FaceDetector) -> None:
    """Re-detect the landmarks on the aligned output: the eyes are where the template put them."""
    assert aligned.faces_found == 1
    assert aligned.image.size == (RESOLUTION, RESOLUTION) and aligned.image.mode == "RGB"
    found = detector.detect(aligned.image)
    assert len(found) == 1
    again = detector.refine(aligned.image, found[0])
    error = np.hypot(*(again.landmarks[:2] - aligned.aligned_landmarks[:2]).T)  # (2,) px
    assert error.max() < EYE_TOLERANCE_PX, error
    # FFHQ's typical placement: eyes near 3/8 and 5/8 of the width, just above the middle.
    np.testing.assert_allclose(
        aligned.aligned_landmarks[:2, 0] / RESOLUTION, [0.375, 0.625], atol=0.03
    )
    assert 0.42 < aligned.aligned_landmarks[:2, 1].mean() / RESOLUTION < 0.5


def test_matrix_maps_source_landmarks(aligned: AlignedFace) -> None:
    lm = aligned.face.landmarks
    mapped = lm @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
    np.testing.assert_allclose(mapped, aligned.aligned_landmarks, atol=1e-3)
    frame = ffhq_frame(lm)
    np.testing.assert_allclose(frame.to_output(lm, RESOLUTION), mapped, atol=1e-3)


def test_cat_has_no_face(detector: FaceDetector) -> None:
    cat = Image.open(IMAGES / "chelsea.png")
    with pytest.raises(FaceNotFound, match="no human face was found") as info:
        align_face(cat, RESOLUTION, detector=detector)
    assert isinstance(info.value, ValueError)


def test_face_index_picks_among_faces(astronaut: Image.Image, detector: FaceDetector) -> None:
    canvas = Image.new("RGB", (900, 512), (128, 128, 128))
    canvas.paste(astronaut, (0, 0))  # the larger face
    canvas.paste(astronaut.resize((300, 300), Image.Resampling.LANCZOS), (580, 100))
    largest = align_face(canvas, 64, detector=detector)
    second = align_face(canvas, 64, face_index=1, detector=detector)
    assert largest.faces_found == second.faces_found == 2
    assert largest.face.landmarks[:, 0].max() < 512 < second.face.landmarks[:, 0].min()
    with pytest.raises(FaceNotFound, match="face_index 2 asked for, but 2 face"):
        align_face(canvas, 64, face_index=2, detector=detector)


def test_exif_rotated_grayscale_photo(astronaut: Image.Image, detector: FaceDetector) -> None:
    stored = astronaut.convert("L").transpose(Image.Transpose.ROTATE_90)  # face lying sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # a viewer rotates it back upright
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", exif=exif, quality=95)
    upright = load_image(buffer.getvalue(), DEFAULT_MAX_PIXELS)
    result = align_face(upright, 64, detector=detector)
    eyes = result.aligned_landmarks[:2]
    assert eyes[0, 0] < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 2.0  # upright and level


def test_crop_center_keeps_the_middle() -> None:
    wide = Image.new("RGBA", (300, 100), (255, 0, 0, 255))
    wide.paste((0, 255, 0, 255), (100, 0, 200, 100))  # green centre square
    out = crop_center(wide, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    pixels = np.asarray(out).reshape(-1, 3)
    assert (pixels[:, 1] > 200).all() and (pixels[:, 0] < 50).all()
    assert crop_center(Image.new("RGB", (20, 30)), 64).size == (64, 64)  # enlarges small ones
