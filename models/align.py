"""FFHQ-style face alignment from five landmarks, and the crop policy for other domains.

FFHQ's generator only knows faces framed the way its training set was made (NVlabs'
ffhq-dataset ``recreate_aligned_images``): an oriented square derived from the eye centres
and the mouth corners. With ``e`` the eye midpoint, ``ee`` the vector from the image-left eye
to the image-right eye, and ``em`` the vector from ``e`` to the mouth midpoint:

    x = ee - rot90(em)                       (rot90(vx, vy) = (-vy, vx)) — the frame's "right"
    x = x / |x| · max(2.0·|ee|, 1.8·|em|)    half the side of the square
    y = rot90(x)                             the frame's "down"
    c = e + 0.1·em                           the square's centre

and the square ``c ± x ± y`` is resampled to R×R. The template that results, in output pixels:
the square is upright and centred on ``c``, so the eye midpoint lands at
``(R/2, R/2 − 0.05·R·|em|/s)`` with ``s = max(2|ee|, 1.8|em|)``, the eyes are level when the
face has no roll, and the inter-ocular distance is ``R·|ee|/(2s)`` ≤ R/4 — about R/4 for common
proportions (eyes near x = 0.375 R and 0.625 R, y ≈ 0.47 R).

Deviations from the dlib-68 original, since only five points are available:
- eye centres are YuNet's eye points, not the mean of dlib's six eyelid-contour points per eye;
- mouth corners are YuNet's, not dlib's outer-lip points 48 and 54;
- YuNet's landmarks jitter by about 3 % of the face width between scales, so they are averaged
  over three sizes and a mirror image first (``FaceDetector.refine``);
- landmarks are pixel indices (pixel centres at integers) and are shifted by half a pixel into
  the resampler's edge coordinates, as the original does; resampling is an affine bilinear
  warp at 4× the output size followed by a Lanczos reduction (the original: a PIL QUAD warp to
  4096 px, then an antialiased resize), after the same pre-shrink of very large faces;
- where the square leaves the photo, the photo is mirror-padded and the padding blended
  towards a blurred copy and the mean colour (the original blends towards the median).

``crop_center`` is the policy for non-face domains (landscapes, objects): no detection, the
largest centred square, resized to the generator's resolution.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from models.face_detect import Face, FaceDetector, load_face_detector
from models.images import to_rgb

logger = logging.getLogger(__name__)

EYE_SCALE = 2.0  # half side of the square >= this × eye-to-eye distance
MOUTH_SCALE = 1.8  # half side of the square >= this × eye-to-mouth distance
CENTRE_SHIFT = 0.1  # the square's centre moves from the eye midpoint towards the mouth by this
SUPERSAMPLE = 4  # the warp renders at this multiple of the output size, then reduces
BORDER_FRACTION = 0.1  # context kept around the square when cropping, × its side
MIN_BORDER = 3  # px
PAD_FRACTION = 0.3  # mirror padding added where the square leaves the photo, × its side
BLUR_FRACTION = 0.02  # blur radius of the padding blend, × the square's side
RIGHT_EYE, LEFT_EYE, NOSE, RIGHT_MOUTH, LEFT_MOUTH = range(5)  # subject's right = image left


class FaceNotFound(ValueError):
    """No usable face in the photo (or not the one asked for); the message says which."""


@dataclass(frozen=True)
class FaceFrame:
    """The oriented square of FFHQ alignment, in edge coordinates of the source image."""

    centre: np.ndarray  # (2,) c
    x: np.ndarray  # (2,) half side, pointing to the frame's right
    y: np.ndarray  # (2,) half side, pointing down

    @property
    def side(self) -> float:
        return 2.0 * float(np.hypot(*self.x))

    def corner(self) -> np.ndarray:
        """The top-left corner c − x − y: (2,)."""
        return self.centre - self.x - self.y

    def quad(self) -> np.ndarray:
        """Corners (4, 2): top-left, bottom-left, bottom-right, top-right."""
        c, x, y = self.centre, self.x, self.y
        return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])

    def matrix(self, resolution: int) -> np.ndarray:
        """(2, 3) affine map from source pixel indices to output pixel indices."""
        basis = np.stack([2 * self.x, 2 * self.y], axis=1) / resolution  # columns: du, dv
        linear = np.linalg.inv(basis)  # source edge offsets -> output edge coordinates
        offset = linear @ (0.5 - self.corner()) - 0.5  # index -> edge, and back
        return np.concatenate([linear, offset[:, None]], axis=1)

    def to_output(self, points: np.ndarray, resolution: int) -> np.ndarray:
        """Source pixel indices (N, 2) -> output pixel indices (N, 2)."""
        m = self.matrix(resolution)
        return points @ m[:, :2].T + m[:, 2]

    def scaled(self, sx: float, sy: float, shift: tuple[float, float] = (0.0, 0.0)) -> FaceFrame:
        """The same square after the image is scaled by (sx, sy), then shifted."""
        s = np.array([sx, sy])
        return FaceFrame(self.centre * s + np.array(shift), self.x * s, self.y * s)


def ffhq_frame(landmarks: np.ndarray) -> FaceFrame:
    """The FFHQ square of five landmarks (5, 2) in pixel indices (YuNet's order)."""
    lm = np.asarray(landmarks, dtype=np.float64) + 0.5  # pixel indices -> edge coordinates
    eye_avg = (lm[RIGHT_EYE] + lm[LEFT_EYE]) / 2
    eye_to_eye = lm[LEFT_EYE] - lm[RIGHT_EYE]  # image-left eye to image-right eye
    mouth_avg = (lm[RIGHT_MOUTH] + lm[LEFT_MOUTH]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    if norm == 0.0:
        raise FaceNotFound("the face's landmarks are degenerate (all at one point)")
    half = max(
        EYE_SCALE * float(np.hypot(*eye_to_eye)), MOUTH_SCALE * float(np.hypot(*eye_to_mouth))
    )
    x = x / norm * half
    return FaceFrame(centre=eye_avg + CENTRE_SHIFT * eye_to_mouth, x=x, y=_rot90(x))


def _rot90(v: np.ndarray) -> np.ndarray:
    """Rotate a 2-vector by +90° in image coordinates (y down): (vx, vy) -> (-vy, vx)."""
    return np.array([-v[1], v[0]])


def render_frame(image: Image.Image, frame: FaceFrame, resolution: int) -> Image.Image:
    """Resample ``frame``'s square of an RGB image to ``resolution`` × ``resolution``."""
    # Very large faces: shrink the photo first so the warp never minifies by more than ~2×.
    shrink = int(math.floor(frame.side / resolution * 0.5))
    if shrink > 1:
        small = (max(1, round(image.width / shrink)), max(1, round(image.height / shrink)))
        frame = frame.scaled(small[0] / image.width, small[1] / image.height)
        image = image.resize(small, Image.Resampling.LANCZOS)

    # Keep only the square plus a border of context.
    quad = frame.quad()
    border = max(round(frame.side * BORDER_FRACTION), MIN_BORDER)
    lo = np.floor(quad.min(axis=0)).astype(int) - border  # (2,) x, y
    hi = np.ceil(quad.max(axis=0)).astype(int) + border
    box = (max(lo[0], 0), max(lo[1], 0), min(hi[0], image.width), min(hi[1], image.height))
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
        frame = frame.scaled(1.0, 1.0, (-box[0], -box[1]))
        lo, hi = lo - np.array(box[:2]), hi - np.array(box[:2])

    # Where the square (plus border) leaves the photo, mirror-pad and soften the padding.
    outside = max(-lo[0], -lo[1], hi[0] - image.width, hi[1] - image.height)
    if outside > 0:
        pad = max(int(outside), round(frame.side * PAD_FRACTION))
        image = _soft_pad(image, pad, blur=frame.side * BLUR_FRACTION)
        frame = frame.scaled(1.0, 1.0, (pad, pad))

    size = resolution * SUPERSAMPLE
    corner, step_u, step_v = frame.corner(), 2 * frame.x / size, 2 * frame.y / size
    coeffs = (step_u[0], step_v[0], corner[0], step_u[1], step_v[1], corner[1])  # out -> source
    warped = image.transform(
        (size, size), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )
    return warped.resize((resolution, resolution), Image.Resampling.LANCZOS)


def _soft_pad(image: Image.Image, pad: int, blur: float) -> Image.Image:
    """Mirror-pad by ``pad`` px per side; the padding fades to a blur and the mean colour."""
    pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
    h, w = pixels.shape[:2]
    padded = np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    rows = np.arange(h + 2 * pad, dtype=np.float32)[:, None]
    cols = np.arange(w + 2 * pad, dtype=np.float32)[None, :]
    # Distance outside the photo, in units of the padding: 0 inside, 1 at the outer edge.
    dy = np.maximum(pad - rows, rows - (h + pad - 1)).clip(0) / pad
    dx = np.maximum(pad - cols, cols - (w + pad - 1)).clip(0) / pad
    mask = np.maximum(dx, dy)[..., None]  # (H', W', 1)
    blurred = np.asarray(
        Image.fromarray(padded.clip(0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(max(blur, 1.0))
        ),
        dtype=np.float32,
    )
    padded += (blurred - padded) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0) * (mask > 0)
    padded += (pixels.reshape(-1, 3).mean(axis=0) - padded) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.rint(padded).clip(0, 255).astype(np.uint8))


@dataclass(frozen=True)
class AlignedFace:
    """A face aligned FFHQ-style, and where it came from."""

    image: Image.Image  # RGB, resolution × resolution
    face: Face  # the chosen face, landmarks refined, in source pixel indices
    aligned_landmarks: np.ndarray  # (5, 2) the landmarks mapped into ``image``
    matrix: np.ndarray  # (2, 3) source pixel indices -> aligned pixel indices
    faces_found: int  # faces detected in the photo


@functools.lru_cache(maxsize=1)
def default_detector() -> FaceDetector:
    """The bundled YuNet detector on the CPU, loaded once per process."""
    return load_face_detector()


def align_face(
    image: Image.Image,
    resolution: int,
    *,
    face_index: int = 0,
    detector: FaceDetector | None = None,
    refine: bool = True,
) -> AlignedFace:
    """Detect the faces of a photo and align one of them FFHQ-style.

    ``face_index`` picks among the faces sorted by box area, largest first: the default 0 is
    the largest face. Raises ``FaceNotFound`` when there is no face or no face of that index.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = to_rgb(image)
    detector = detector if detector is not None else default_detector()
    faces = sorted(detector.detect(image), key=lambda f: f.area, reverse=True)
    if not faces:
        raise FaceNotFound(
            "no human face was found in the image; use a photo with a clearly visible face, "
            "or the 'other' domain for pictures without one"
        )
    if not 0 <= face_index < len(faces):
        raise FaceNotFound(
            f"face_index {face_index} asked for, but {len(faces)} face(s) were found "
            f"(0 is the largest, {len(faces) - 1} the smallest)"
        )
    face = faces[face_index]
    if refine:
        face = detector.refine(image, face)
    frame = ffhq_frame(face.landmarks)
    aligned = render_frame(image, frame, resolution)
    logger.info(
        "aligned face %d of %d (score %.2f, square side %.0f px)",
        face_index,
        len(faces),
        face.score,
        frame.side,
    )
    return AlignedFace(
        image=aligned,
        face=face,
        aligned_landmarks=frame.to_output(face.landmarks, resolution).astype(np.float32),
        matrix=frame.matrix(resolution),
        faces_found=len(faces),
    )


def crop_center(image: Image.Image, resolution: int) -> Image.Image:
    """Non-face domains: the largest centred square, resized to ``resolution``.

    Orientation and mode are sanitised first. The square is cut before resizing, so the
    aspect ratio is kept (no letterboxing: StyleGAN generators have no notion of borders);
    shrinking uses Lanczos (antialiased), enlarging bicubic.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = to_rgb(image)
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    method = Image.Resampling.LANCZOS if side >= resolution else Image.Resampling.BICUBIC
    return square.resize((resolution, resolution), method)
