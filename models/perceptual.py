"""Image-similarity measures for inversion: PSNR, SSIM, LPIPS-VGG and a weight-free fallback.

All take images (B, 3, H, W) in [-1, 1] and return one value per image, (B,).

LPIPS (Zhang et al. 2018, v0.1, VGG16) needs two files that cannot be downloaded here:
torchvision's ImageNet VGG16 (``vgg16-397923af.pth``; the layout of
``torchvision.models.vgg16().state_dict()``, only ``features.*`` is used) and the LPIPS linear
layers (``weights/v0.1/vgg.pth`` of the ``lpips`` package, BSD-2-Clause: keys
``lin{0..4}.model.1.weight``, shapes (1, C, 1, 1)). ``load_lpips`` reads both from local paths.

Without them, ``StructureLoss`` stands in: (1 − SSIM) plus the L1 distance of image gradients,
averaged over a pyramid of scales. It needs no weights, works for every domain, and punishes
the blur and misplaced edges that a pixel MSE tolerates. (The identity network was the other
candidate; it was not chosen because it sees only the central face, is trained to ignore the
lighting, colour, hair and background a reconstruction must keep, and means nothing outside
faces. For faces the inversion adds it as a separate identity term instead.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.frozen import freeze

logger = logging.getLogger(__name__)

SSIM_WINDOW = 11  # Gaussian window (Wang et al. 2004)
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03  # stabilisers, for a data range of 1
STRUCTURE_LEVELS = 4  # pyramid levels of the fallback loss
STRUCTURE_MIN_SIZE = 16  # px; coarser levels are skipped

# VGG16 "features" as torchvision numbers them: convs (3×3, padding 1) at these indices, each
# followed by a ReLU; max pools at 4, 9, 16, 23. LPIPS taps the ReLUs after conv1_2, conv2_2,
# conv3_3, conv4_3 and conv5_3.
VGG16_CONVS = {0: 64, 2: 64, 5: 128, 7: 128, 10: 256, 12: 256, 14: 256,
               17: 512, 19: 512, 21: 512, 24: 512, 26: 512, 28: 512}  # fmt: skip
VGG16_POOLS = (4, 9, 16, 23)
LPIPS_TAPS = (3, 8, 15, 22, 29)  # feature indices whose outputs are compared
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # LPIPS' input scaling layer, for [-1, 1] images
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_NORM_EPS = 1e-10


def to_unit(images: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB per image, on the [0, 1] scale: (B,)."""
    mse = (to_unit(a) - to_unit(b)).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    """Separable Gaussian as a depthwise (C, 1, size, size) kernel summing to 1."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, size, size).contiguous()


def ssim_map(x: Tensor, y: Tensor) -> Tensor:
    """Local SSIM of images in [0, 1]: (B, C, H', W') over 'valid' Gaussian windows.

    The window shrinks (odd sizes) for images smaller than 11 px.
    """
    channels = x.shape[1]
    size = min(SSIM_WINDOW, min(x.shape[-2:]))
    size -= 1 - size % 2  # odd
    window = _gaussian_window(size, SSIM_SIGMA * size / SSIM_WINDOW, channels, x)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean structural similarity per image (Gaussian 11×11, σ 1.5, RGB averaged): (B,)."""
    return ssim_map(to_unit(a), to_unit(b)).flatten(1).mean(dim=1)


class StructureLoss(nn.Module):
    """Weight-free perceptual stand-in: (1 − SSIM) + gradient L1, averaged over a pyramid."""

    def __init__(self, levels: int = STRUCTURE_LEVELS, min_size: int = STRUCTURE_MIN_SIZE) -> None:
        super().__init__()
        self.levels = levels
        self.min_size = min_size

    def forward(self, x: Tensor, y: Tensor) -> Tensor:  # (B, 3, H, W) x2 in [-1, 1] -> (B,)
        x, y = to_unit(x), to_unit(y)
        terms: list[Tensor] = []
        for _ in range(self.levels):
            if min(x.shape[-2:]) < self.min_size:
                break
            structure = 1.0 - ssim_map(x, y).flatten(1).mean(dim=1)
            edges = _gradient_l1(x, y)
            terms.append(structure + edges)
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        if not terms:
            return (x - y).abs().flatten(1).mean(dim=1)
        return torch.stack(terms).mean(dim=0)


def _gradient_l1(x: Tensor, y: Tensor) -> Tensor:
    """Mean |∇x − ∇y| over horizontal and vertical differences: (B,)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().flatten(1).mean(dim=1) + dy.abs().flatten(1).mean(dim=1)


class LinLayer(nn.Module):
    """LPIPS' per-layer weighting: a 1×1 conv to one channel, no bias (dropout as published)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def vgg16_features() -> nn.Sequential:
    """VGG16's conv part up to relu5_3 (indices 0..29), numbered as torchvision numbers it."""
    layers: list[nn.Module] = []
    in_ch = 3
    for index in range(LPIPS_TAPS[-1] + 1):
        if index in VGG16_CONVS:
            layers.append(nn.Conv2d(in_ch, VGG16_CONVS[index], kernel_size=3, padding=1))
            in_ch = VGG16_CONVS[index]
        elif index in VGG16_POOLS:
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS v0.1 with a VGG16 backbone: distance (B,) of images in [-1, 1]."""

    shift: Tensor
    scale: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(LinLayer(c) for c in LPIPS_CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        taps: list[Tensor] = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in LPIPS_TAPS:
                taps.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + LPIPS_NORM_EPS))
        return taps

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        total = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y), strict=True):
            total = total + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))  # spatial average
        return total


def lpips_state_dict(vgg: dict[str, Tensor], lins: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map torchvision VGG16 + LPIPS linear-layer state dicts onto ``LPIPS``'s keys."""
    vgg = {k.removeprefix("module."): v for k, v in vgg.items()}
    lins = {k.removeprefix("module."): v for k, v in lins.items()}
    state: dict[str, Tensor] = {}
    missing: list[str] = []
    for index in VGG16_CONVS:
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key in vgg:
                state[key] = vgg[key]
            else:
                missing.append(key)
    for k in range(len(LPIPS_CHANNELS)):
        key = f"lin{k}.model.1.weight"
        if key in lins:
            state[f"lins.{k}.model.1.weight"] = lins[key]
        else:
            missing.append(key)
    if missing:
        raise ValueError(f"LPIPS weights lack {len(missing)} tensors, e.g. {missing[:3]}")
    return state


def load_lpips(vgg_path: Path, lin_path: Path, *, device: str | torch.device = "cpu") -> LPIPS:
    """LPIPS-VGG from local files (see the module docstring), frozen, on ``device``."""
    tensors = []
    for path in (Path(vgg_path), Path(lin_path)):
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS weights not found: {path}")
        tensors.append(torch.load(path, map_location="cpu", weights_only=True))
    model = LPIPS()
    state = lpips_state_dict(*tensors)
    state.update(shift=model.shift, scale=model.scale)  # constants, not stored in the files
    model.load_state_dict(state, strict=True)
    logger.info("loaded LPIPS-VGG from %s and %s", vgg_path, lin_path)
    return freeze(model).to(device)


def downsample_to(images: Tensor, size: int) -> Tensor:
    """Area-average (B, C, H, W) so the longer side is at most ``size`` px (else unchanged)."""
    h, w = images.shape[-2:]
    if max(h, w) <= size:
        return images
    return F.interpolate(images, size=(h * size // max(h, w), w * size // max(h, w)), mode="area")
