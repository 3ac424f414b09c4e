"""Audio encoders: log-mel input (B, 1, 128, 512) -> CLIP-space embedding (B, 512).

The released checkpoint (``resnet18_57.pth``) is a ``Conv2d(1 -> 3, 3x3, no padding)`` that
turns the one-channel spectrogram into an RGB-like image, followed by timm's ``resnet18`` with
a 512-way head. The paper describes the same design on a ResNet-50, provided here for
training. Attribute names follow the official module so its state dict loads unchanged once
the ``module.`` prefix that DataParallel adds is stripped.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
from torch import nn

from models.audio import INPUT_HEIGHT, INPUT_WIDTH
from models.frozen import freeze

logger = logging.getLogger(__name__)

EMBED_DIM = 512  # CLIP ViT-B/32 embedding size
STEM_CHANNELS = 3  # the 1 -> 3 convolution feeds an ImageNet-shaped backbone
STEM_KERNEL = 3  # no padding: (128, 512) -> (126, 510)
DEFAULT_ARCH = "resnet18"  # the released checkpoint

# timm name -> (residual block kind, blocks per stage); detection reads the same facts off a
# checkpoint's keys.
ARCHITECTURES: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}

_PREFIX = "module."  # added by nn.DataParallel when the official weights were saved
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "audio_encoder", "net")
_STAGE_KEY = re.compile(r"^feature_extractor\.layer(\d+)\.(\d+)\.")
_STEM_WEIGHT = "conv.weight"
_HEAD_WEIGHT = "feature_extractor.fc.weight"
_BOTTLENECK_MARK = "feature_extractor.layer1.0.conv3.weight"  # only bottleneck blocks have it
_OPTIONAL_SUFFIX = ".num_batches_tracked"  # BN counters, absent from the official file


class AudioEncoderError(ValueError):
    """A checkpoint that is not an audio encoder this module knows how to build."""


class AudioEncoder(nn.Module):
    """Stem convolution + timm ResNet: (B, 1, 128, 512) float -> (B, embed_dim)."""

    def __init__(self, arch: str = DEFAULT_ARCH, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise AudioEncoderError(
                f"unknown audio encoder architecture {arch!r}; expected one of "
                f"{sorted(ARCHITECTURES)}"
            )
        self.arch = arch
        self.embed_dim = embed_dim
        self.conv = nn.Conv2d(1, STEM_CHANNELS, kernel_size=STEM_KERNEL)
        self.feature_extractor = timm.create_model(arch, pretrained=False, num_classes=embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, INPUT_HEIGHT, INPUT_WIDTH):
            raise ValueError(
                f"audio encoder expects (B, 1, {INPUT_HEIGHT}, {INPUT_WIDTH}), got {tuple(x.shape)}"
            )
        return self.feature_extractor(self.conv(x))  # (B, embed_dim)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, embed_dim={self.embed_dim}"


def random_audio_encoder(arch: str = DEFAULT_ARCH, *, seed: int = 0) -> AudioEncoder:
    """Seeded random weights (frozen, eval) for offline profiles and tests.

    The global RNG state is left as it was, so callers' own seeding is not disturbed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AudioEncoder(arch)
    return freeze(model)


def _unwrap(obj: object) -> Mapping[str, object]:
    """The state dict itself, or one stored under a common wrapper key."""
    if not isinstance(obj, Mapping):
        raise AudioEncoderError(
            f"checkpoint holds a {type(obj).__name__}, expected a state dict (mapping of "
            "parameter names to tensors)"
        )
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            return inner
    raise AudioEncoderError(
        f"checkpoint holds no tensors at the top level nor under any of {list(_WRAPPER_KEYS)}; "
        f"top-level keys: {sorted(map(str, obj))[:10]}"
    )


def _normalise(raw: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Strip the DataParallel prefix and cast floating tensors to float32."""
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, torch.Tensor):
            raise AudioEncoderError(f"checkpoint entry {key!r} is not a tensor")
        name = key[len(_PREFIX) :] if key.startswith(_PREFIX) else key
        state[name] = value.float() if value.is_floating_point() else value
    return state


def detect_architecture(state: Mapping[str, torch.Tensor]) -> tuple[str, int]:
    """(timm arch name, embedding size) read off a prefix-free state dict's keys and shapes."""
    expected = (
        f"expected the official AudioEncoder layout: '{_STEM_WEIGHT}' "
        f"({STEM_CHANNELS}, 1, {STEM_KERNEL}, {STEM_KERNEL}) and 'feature_extractor.*' of a "
        f"timm ResNet, one of {sorted(ARCHITECTURES)}, with head '{_HEAD_WEIGHT}'"
    )
    stem = state.get(_STEM_WEIGHT)
    head = state.get(_HEAD_WEIGHT)
    stem_shape = (STEM_CHANNELS, 1, STEM_KERNEL, STEM_KERNEL)
    if stem is None or head is None or tuple(stem.shape) != stem_shape or head.dim() != 2:
        sample = sorted(state)[:5]
        raise AudioEncoderError(
            f"unrecognised audio encoder checkpoint (keys {sample}...); {expected}"
        )
    blocks: dict[int, set[int]] = {}
    for key in state:
        match = _STAGE_KEY.match(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    depths = tuple(len(blocks[stage]) for stage in sorted(blocks))
    kind = "bottleneck" if _BOTTLENECK_MARK in state else "basic"
    for arch, layout in ARCHITECTURES.items():
        if layout == (kind, depths):
            return arch, int(head.shape[0])
    raise AudioEncoderError(
        f"unrecognised ResNet in checkpoint ({kind} blocks, stage depths {depths}); {expected}"
    )


def load_audio_encoder(path: str | Path, map_location: str | torch.device = "cpu") -> AudioEncoder:
    """Load an audio encoder checkpoint, frozen in eval mode, float32.

    Accepts the official file (float16, ``module.`` prefix) and float32 / prefix-free variants,
    bare or wrapped under a common key such as ``state_dict``; the architecture comes from the
    keys. Only tensors are unpickled (``weights_only=True``).
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise AudioEncoderError(f"cannot read audio encoder checkpoint {path}: {exc}") from exc
    state = _normalise(_unwrap(obj))
    arch, embed_dim = detect_architecture(state)
    model = AudioEncoder(arch, embed_dim).to(map_location)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise AudioEncoderError(f"checkpoint does not fit {arch}: {exc}") from exc
    missing = [k for k in result.missing_keys if not k.endswith(_OPTIONAL_SUFFIX)]
    if missing or result.unexpected_keys:
        raise AudioEncoderError(
            f"checkpoint does not fit {arch}: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )
    logger.info("loaded audio encoder %s (%d-d) from %s", arch, embed_dim, path)
    return freeze(model)
