"""ArcFace IR-SE50 identity loss (the paper's L_ID for faces).

The backbone reproduces the layout of ``model_ir_se50.pth`` (pSp/StyleCLIP release) key for key,
so the released file loads strictly. Inputs follow the official loss: average-pool to 256 px,
crop the face box [35:223, 32:220], average-pool to 112 px.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

INPUT_SIZE = 112  # backbone input, px
POOL_SIZE = 256  # images are first pooled to this size (the crop box is in its coordinates)
CROP_ROWS = (35, 223)  # face box of an aligned 256 px FFHQ image
CROP_COLS = (32, 220)
STEM_CHANNELS = 64
EMBED_DIM = 512
SE_REDUCTION = 16
FINAL_GRID = INPUT_SIZE // 16  # four stride-2 stages: 112 -> 7
DROP_RATIO = 0.6  # as the official loss builds it; inactive in eval mode


@dataclass(frozen=True)
class Stage:
    """One resolution stage: ``units`` residual units, the first one with stride 2."""

    in_channels: int
    channels: int
    units: int


IR_SE50_STAGES = (
    Stage(64, 64, 3),
    Stage(64, 128, 4),
    Stage(128, 256, 14),
    Stage(256, 512, 3),
)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        gate = F.adaptive_avg_pool2d(x, 1)  # (B, C, 1, 1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class IRSEUnit(nn.Module):
    """Pre-activation residual unit with squeeze-excitation ("bottleneck_IR_SE")."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.shortcut_layer: nn.Module
        if in_channels == channels:
            # A 1×1 max pool is plain strided subsampling (parameter-free, as in the release).
            self.shortcut_layer = nn.MaxPool2d(kernel_size=1, stride=stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            SqueezeExcite(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50: (B, 3, 112, 112) in [-1, 1] -> (B, 512) unit-norm face features."""

    def __init__(self, stages: tuple[Stage, ...] = IR_SE50_STAGES) -> None:
        super().__init__()
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(STEM_CHANNELS),
            nn.PReLU(STEM_CHANNELS),
        )
        units: list[nn.Module] = []
        for stage in stages:
            units.append(IRSEUnit(stage.in_channels, stage.channels, stride=2))
            units.extend(
                IRSEUnit(stage.channels, stage.channels, 1) for _ in range(stage.units - 1)
            )
        self.body = nn.Sequential(*units)
        last = stages[-1].channels
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(last),
            nn.Dropout(DROP_RATIO),
            nn.Flatten(),
            nn.Linear(last * FINAL_GRID * FINAL_GRID, EMBED_DIM),
            nn.BatchNorm1d(EMBED_DIM),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"IR-SE50 takes {INPUT_SIZE} px faces, got {tuple(x.shape)}")
        x = self.body(self.input_layer(x))  # (B, 512, 7, 7)
        return F.normalize(self.output_layer(x), dim=-1)  # (B, 512)


class IdentityLoss(nn.Module):
    """``1 - <f(y_hat), f(y)>`` with ArcFace features f, frozen.

    The official optimiser calls its loss as ``id_loss(img_orig, img_gen)`` and detaches the
    second argument, so no gradient reaches the latent from that term. Here the edited image
    is the differentiable argument and the source features are constants computed once.
    """

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.facenet = backbone if backbone is not None else IRSE50()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> IdentityLoss:
        """Stay in eval mode: batch-norm statistics and dropout must not change the loss."""
        return super().train(False)

    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 512) unit vectors, the official preprocessing."""
        x = images
        if x.shape[-2] != POOL_SIZE or x.shape[-1] != POOL_SIZE:
            x = F.adaptive_avg_pool2d(x, (POOL_SIZE, POOL_SIZE))
        x = x[:, :, CROP_ROWS[0] : CROP_ROWS[1], CROP_COLS[0] : CROP_COLS[1]]  # (B, 3, 188, 188)
        x = F.adaptive_avg_pool2d(x, (INPUT_SIZE, INPUT_SIZE))
        return self.facenet(x)

    def loss_from_features(self, y_hat: Tensor, y_feats: Tensor) -> Tensor:
        """Per-image loss (B,) of images ``y_hat`` against precomputed features (B or 1, 512)."""
        return 1 - (self.features(y_hat) * y_feats.detach()).sum(-1)

    def forward(self, y_hat: Tensor, y: Tensor) -> Tensor:
        """Mean loss of edited images ``y_hat`` against source images ``y`` (constants)."""
        with torch.no_grad():
            y_feats = self.features(y)
        return self.loss_from_features(y_hat, y_feats).mean()

    @torch.no_grad()
    def similarity(self, a: Tensor, b: Tensor) -> Tensor:
        """Cosine similarity (B,) of the faces in two image batches, for reports."""
        return (self.features(a) * self.features(b)).sum(-1)


def random_identity(seed: int = 0, *, device: str | torch.device = "cpu") -> IdentityLoss:
    """A seeded random-weight IR-SE50 loss (tests, smoke runs); global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = IRSE50()
    return IdentityLoss(backbone).to(device)


def load_identity(checkpoint: Path, *, device: str | torch.device = "cpu") -> IdentityLoss:
    """The released ``model_ir_se50.pth`` (a plain state dict), loaded strictly."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"IR-SE50 checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    backbone = IRSE50()
    backbone.load_state_dict(state, strict=True)
    logger.info("loaded IR-SE50 identity network from %s", checkpoint)
    return IdentityLoss(backbone).to(device)
