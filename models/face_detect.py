"""YuNet face detection (OpenCV Zoo 2023mar) as a PyTorch module, with OpenCV's decoding.

The network is rebuilt layer for layer from the bundled ONNX graph (weights folded to float
by ``models.onnx_weights``) and decoded as OpenCV's ``FaceDetectorYN`` does it:

- input: BGR values 0..255 (no mean, no scale), zero-padded right/bottom to a multiple of 32;
- three levels (strides 8, 16, 32), one prior per cell, cells in row-major order;
- score = sqrt(clamp(cls, 0, 1) · clamp(obj, 0, 1));
- box centre = (cell + offset) · stride, size = exp(log-size) · stride;
- landmark n = (cell + offset_n) · stride, in the order: right eye, left eye, nose tip,
  right mouth corner, left mouth corner (the subject's right, i.e. the image's left);
- non-maximum suppression at IoU 0.3 (OpenCV rounds boxes to integers first; this code keeps
  them in float, which can only matter for near-ties).

Coordinates are pixel indices of the input image (the centre of the top-left pixel is 0, 0),
the convention of OpenCV's detector and of ``cv2.warpAffine``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.ops import nms

from models.frozen import freeze
from models.onnx_weights import YUNET, bundled_model, read_onnx, verified

logger = logging.getLogger(__name__)

STRIDES = (8, 16, 32)  # feature levels, px per cell
DIVISOR = 32  # inputs are padded to a multiple of the coarsest stride
WIDTH = 64  # channels of the three pyramid levels
N_LANDMARKS = 5
SCORE_THRESHOLD = 0.6  # minimum face score (OpenCV's default is 0.9; 0.6 keeps small faces)
NMS_IOU = 0.3  # OpenCV's default
TOP_K = 5000  # candidates kept by the NMS
DETECT_MAX_SIDE = 1024  # px; larger photos are searched on a downscaled copy
REFINE_FACE_SIZES = (96, 128, 160)  # px; face widths at which ``refine`` re-detects
REFINE_CONTEXT = 2.5  # crop side around the face for ``refine``, in face widths
REFINE_MIN_IOU = 0.5  # a re-detection must overlap the face this much to count
MIRRORED = (1, 0, 2, 4, 3)  # landmark order after a horizontal flip (eyes and corners swap)
HEAD_OUTPUTS = {"cls": 1, "bbox": 4, "obj": 1, "kps": 2 * N_LANDMARKS}  # channels per head


class DPUnit(nn.Module):
    """1×1 conv, then depthwise 3×3 conv (+ ReLU): YuNet's only building block."""

    def __init__(self, in_ch: int, out_ch: int, relu: bool = True) -> None:
        super().__init__()
        self.pointwise = nn.Conv2d(in_ch, out_ch, kernel_size=1)
        self.depthwise = nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1, groups=out_ch)
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.depthwise(self.pointwise(x))
        return F.relu(x) if self.relu else x


class YuNet(nn.Module):
    """(B, 3, H, W) BGR 0..255, H and W multiples of 32 -> raw head outputs per level.

    Returns ``{"cls_8": (B, HW/64, 1), ..., "kps_32": (B, HW/1024, 10)}`` exactly as the ONNX
    graph names them; cls and obj have been through a sigmoid.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, kernel_size=3, stride=2, padding=1)  # batch norm folded in
        self.stem_unit = DPUnit(16, 16)
        # (in, out) of each stage's two units; a 2×2 max pool precedes stages 2 (after the
        # stem), 3, 4 and 5; stages 3, 4, 5 give strides 8, 16, 32.
        self.stage1 = nn.Sequential(DPUnit(16, 16), DPUnit(16, 32))
        self.stage2 = nn.Sequential(DPUnit(32, 32), DPUnit(32, WIDTH))
        self.stage3 = nn.Sequential(DPUnit(WIDTH, WIDTH), DPUnit(WIDTH, WIDTH))
        self.stage4 = nn.Sequential(DPUnit(WIDTH, WIDTH), DPUnit(WIDTH, WIDTH))
        self.stage5 = nn.Sequential(DPUnit(WIDTH, WIDTH), DPUnit(WIDTH, WIDTH))
        self.lateral = nn.ModuleList(DPUnit(WIDTH, WIDTH) for _ in STRIDES)  # per level
        self.heads = nn.ModuleDict(
            {
                name: nn.ModuleList(DPUnit(WIDTH, ch, relu=False) for _ in STRIDES)
                for name, ch in HEAD_OUTPUTS.items()
            }
        )

    def convs_in_graph_order(self) -> list[nn.Conv2d]:
        """Every conv in the order the ONNX graph lists its Conv nodes (for the loader)."""
        units: list[DPUnit] = [self.stem_unit]
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4, self.stage5):
            units.extend(stage)  # type: ignore[arg-type]
        units.extend(self.lateral[i] for i in (2, 1, 0))  # type: ignore[misc]
        for name in HEAD_OUTPUTS:
            units.extend(self.heads[name])  # type: ignore[arg-type]
        convs = [self.stem]
        for unit in units:
            convs.extend([unit.pointwise, unit.depthwise])
        return convs

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % DIVISOR or x.shape[3] % DIVISOR:
            raise ValueError(f"YuNet takes (B, 3, H, W) with H, W multiples of 32, got {x.shape}")
        x = self.stem_unit(F.relu(self.stem(x)))  # (B, 16, H/2, W/2)
        x = self.stage2(self.stage1(F.max_pool2d(x, 2)))  # (B, 64, H/4, W/4)
        c3 = self.stage3(F.max_pool2d(x, 2))  # stride 8
        c4 = self.stage4(F.max_pool2d(c3, 2))  # stride 16
        c5 = self.stage5(F.max_pool2d(c4, 2))  # stride 32
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4 + F.interpolate(p5, scale_factor=2.0, mode="nearest"))
        p3 = self.lateral[0](c3 + F.interpolate(p4, scale_factor=2.0, mode="nearest"))
        out: dict[str, Tensor] = {}
        for level, (stride, feat) in enumerate(zip(STRIDES, (p3, p4, p5), strict=True)):
            for name, channels in HEAD_OUTPUTS.items():
                y = cast(nn.ModuleList, self.heads[name])[level](feat)  # (B, ch, h, w)
                y = y.permute(0, 2, 3, 1).reshape(y.shape[0], -1, channels)  # (B, h*w, ch)
                out[f"{name}_{stride}"] = torch.sigmoid(y) if name in ("cls", "obj") else y
        return out


def load_yunet(path: Path | None = None) -> YuNet:
    """YuNet with the bundled (or given) 2023mar weights, folded to float32, frozen."""
    path = bundled_model(YUNET) if path is None else verified(Path(path), YUNET)
    graph = read_onnx(path)
    conv_nodes = [n for n in graph.nodes if n.op_type == "Conv"]
    net = YuNet()
    convs = net.convs_in_graph_order()
    if len(conv_nodes) != len(convs):
        raise ValueError(f"{path}: {len(conv_nodes)} Conv nodes, YuNet has {len(convs)}")
    with torch.no_grad():
        for node, conv in zip(conv_nodes, convs, strict=True):
            attrs = graph.attrs(node)
            weight = torch.from_numpy(graph.tensor(node.input[1]))
            bias = torch.from_numpy(graph.tensor(node.input[2]))
            stride = int(attrs.get("strides", [1, 1])[0])
            if (
                weight.shape != conv.weight.shape
                or int(attrs.get("group", 1)) != conv.groups
                or stride != conv.stride[0]
            ):
                raise ValueError(
                    f"{path}: Conv {node.output[0]} {tuple(weight.shape)} group "
                    f"{attrs.get('group')} stride {stride} does not fit {conv}"
                )
            conv.weight.copy_(weight)
            assert conv.bias is not None
            conv.bias.copy_(bias)
    logger.info("loaded YuNet face detector from %s", path)
    return freeze(net)


@dataclass(frozen=True)
class Face:
    """One detected face, in pixel-index coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x, y (top-left), width, height
    landmarks: np.ndarray  # (5, 2): right eye, left eye, nose, right / left mouth corner
    score: float

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def scaled(self, factor: float, offset: tuple[float, float] = (0.0, 0.0)) -> Face:
        """This face in an image resized by ``factor`` (then shifted by ``offset`` px).

        Pixel indices scale about pixel edges: ``(i + 0.5) · factor − 0.5``.
        """
        x, y, w, h = self.box
        ox, oy = offset
        shift = 0.5 * factor - 0.5
        return Face(
            box=(x * factor + shift + ox, y * factor + shift + oy, w * factor, h * factor),
            landmarks=(self.landmarks * factor + shift + np.array([ox, oy])).astype(np.float32),
            score=self.score,
        )


class FaceDetector:
    """Detects faces in RGB images with YuNet; results sorted by score, best first."""

    def __init__(
        self,
        net: YuNet,
        score_threshold: float = SCORE_THRESHOLD,  # minimum face score in (0, 1)
        nms_iou: float = NMS_IOU,  # overlap above which the weaker box is dropped
        max_side: int = DETECT_MAX_SIDE,  # detect on a copy downscaled to this long side
    ) -> None:
        self.net = freeze(net)
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_side = max_side

    @property
    def device(self) -> torch.device:
        return self.net.stem.weight.device

    def to(self, device: str | torch.device) -> FaceDetector:
        self.net.to(device)
        return self

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in an RGB image, found on a copy downscaled to ``max_side`` if larger."""
        if image.mode != "RGB":
            raise ValueError(f"detect takes RGB images, got mode {image.mode}")
        scale = min(1.0, self.max_side / max(image.size))
        if scale == 1.0:
            return self.detect_array(np.asarray(image))
        small = image.resize(_scaled_size(image.size, scale), Image.Resampling.BILINEAR)
        back = image.width / small.width
        return [f.scaled(back) for f in self.detect_array(np.asarray(small))]

    def refine(self, image: Image.Image, face: Face) -> Face:
        """Landmarks of ``face`` averaged over several face sizes and a mirror image.

        YuNet's landmarks move by about 3 % of the face width from one scale to the next;
        averaging ``len(REFINE_FACE_SIZES) * 2`` detections of a crop around the face (each
        matched to ``face`` by overlap) roughly halves that. Falls back to ``face`` itself.
        """
        size = max(face.box[2], face.box[3])
        reduce = int(size // (REFINE_CONTEXT * max(REFINE_FACE_SIZES)))
        if reduce > 1:  # a very large face: work on a box-filtered copy, keep crops small
            small = self.refine(image.reduce(reduce), face.scaled(1.0 / reduce))
            return Face(face.box, small.scaled(reduce).landmarks, small.score)
        x, y, w, h = face.box
        cx, cy, half = x + w / 2, y + h / 2, REFINE_CONTEXT * size / 2
        left, top = round(cx - half), round(cy - half)
        crop = image.crop((left, top, left + round(2 * half), top + round(2 * half)))
        found: list[np.ndarray] = []
        scores: list[float] = []
        for target in REFINE_FACE_SIZES:
            scale = target / size
            sized = crop.resize(_scaled_size(crop.size, scale), Image.Resampling.BILINEAR)
            for mirror in (False, True):
                view = sized.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else sized
                for hit in self.detect_array(np.asarray(view)):
                    if mirror:
                        hit = _unmirror(hit, view.width)
                    hit = hit.scaled(crop.width / view.width, (left, top))
                    if _iou(hit.box, face.box) > REFINE_MIN_IOU:
                        found.append(hit.landmarks)
                        scores.append(hit.score)
                        break
        if not found:
            return face
        landmarks = np.mean(found, axis=0).astype(np.float32)  # (5, 2)
        return Face(box=face.box, landmarks=landmarks, score=float(np.mean(scores)))

    @torch.no_grad()
    def detect_array(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an (H, W, 3) uint8 RGB array, at its own resolution."""
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB array, got {rgb.shape}")
        height, width = rgb.shape[:2]
        bgr = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).to(self.device)
        x = bgr.permute(2, 0, 1)[None].float()  # (1, 3, H, W), 0..255
        pad_h, pad_w = -height % DIVISOR, -width % DIVISOR
        x = F.pad(x, (0, pad_w, 0, pad_h))  # zeros right / bottom, as OpenCV pads
        outputs = self.net(x)
        return self.decode(outputs, x.shape[2], x.shape[3])

    def decode(self, outputs: dict[str, Tensor], height: int, width: int) -> list[Face]:
        """Boxes, landmarks and scores from the raw heads of one (padded) image."""
        candidates: list[Tensor] = []
        for stride in STRIDES:
            rows, cols = height // stride, width // stride
            if outputs[f"cls_{stride}"].shape[1] != rows * cols:
                raise ValueError(f"stride {stride}: expected {rows}×{cols} cells")
            cls = outputs[f"cls_{stride}"][0, :, 0].clamp(0, 1)  # (N,)
            obj = outputs[f"obj_{stride}"][0, :, 0].clamp(0, 1)
            score = torch.sqrt(cls * obj)
            keep = score >= self.score_threshold
            if not bool(keep.any()):
                continue
            idx = torch.nonzero(keep)[:, 0]
            cell = torch.stack([idx % cols, idx // cols], dim=1).float()  # (n, 2): col, row
            bbox = outputs[f"bbox_{stride}"][0, idx]  # (n, 4)
            centre = (cell + bbox[:, :2]) * stride
            size = torch.exp(bbox[:, 2:]) * stride
            kps = outputs[f"kps_{stride}"][0, idx].view(-1, N_LANDMARKS, 2)
            landmarks = (kps + cell[:, None, :]) * stride  # (n, 5, 2)
            candidates.append(
                torch.cat([centre - size / 2, size, landmarks.flatten(1), score[idx, None]], 1)
            )
        if not candidates:
            return []
        dets = torch.cat(candidates).float().cpu()  # (n, 15): x, y, w, h, 10 landmarks, score
        boxes = torch.cat([dets[:, :2], dets[:, :2] + dets[:, 2:4]], dim=1)  # x1, y1, x2, y2
        kept = nms(boxes, dets[:, 14], self.nms_iou)[:TOP_K]
        return [
            Face(
                box=tuple(float(v) for v in dets[i, :4]),  # type: ignore[arg-type]
                landmarks=dets[i, 4:14].reshape(N_LANDMARKS, 2).numpy().astype(np.float32),
                score=float(dets[i, 14]),
            )
            for i in kept.tolist()
        ]


def load_face_detector(
    path: Path | None = None, *, device: str | torch.device = "cpu"
) -> FaceDetector:
    """The bundled YuNet detector on ``device``."""
    return FaceDetector(load_yunet(path)).to(device)


def _unmirror(face: Face, width: int) -> Face:
    """A face found in a horizontally flipped image of ``width`` px, in unflipped coordinates."""
    x, y, w, h = face.box
    landmarks = face.landmarks[list(MIRRORED)].copy()
    landmarks[:, 0] = width - 1 - landmarks[:, 0]
    return Face(box=(width - x - w, y, w, h), landmarks=landmarks, score=face.score)


def _scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0
