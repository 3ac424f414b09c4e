"""A frozen CLIP (open_clip) for the manipulation loss: image/text embeddings and the CLIP loss.

Two image preprocessing modes turn a generator image in [-1, 1] into CLIP's input:

- ``"resize"`` (default): map to [0, 1], resample straight to the model's input size with an
  antialiased bicubic/bilinear filter, then normalise with the mean/std that open_clip attaches to
  the model. This is what CLIP saw in training, and at 1024 px it costs one small resample.
- ``"upstream"``: the paper's official loss input, reproduced exactly: nearest-neighbour upsample
  by 7, then average pooling with kernel ``H * 7 // S`` (the official ``stylegan_size // 32`` for
  ViT-B/32's S = 224), and *no* mean/std normalisation. At 1024 px this materialises a
  3×7168×7168 float tensor (~616 MB) per image; the two averages agree closely on smooth images,
  but the missing normalisation feeds CLIP inputs off its training distribution.
"""

from __future__ import annotations

import logging
import math
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

PreprocessMode = Literal["resize", "upstream"]
LossMode = Literal["cosine", "upstream"]
PREPROCESS_MODES: tuple[str, ...] = ("resize", "upstream")
LOSS_MODES: tuple[str, ...] = ("cosine", "upstream")

SMOKE_MODEL = "smoke-clip"  # tiny random-weight config for the offline smoke profile
SMOKE_CONFIG = Path(__file__).resolve().parent / "configs" / f"{SMOKE_MODEL}.json"

UPSTREAM_UPSAMPLE = 7  # nearest-neighbour factor of the official loss
# The official loss multiplies the cosine by exp(0.07) (~1.0725): a constant loss weight.
UPSTREAM_COS_SCALE = math.exp(0.07)
# Keys a TorchScript CLIP archive carries besides the weights.
_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_RESAMPLE_MODES = ("bicubic", "bilinear")


def register_smoke_config() -> None:
    """Make the smoke config known to open_clip (idempotent)."""
    if SMOKE_MODEL not in open_clip.list_models():
        open_clip.add_model_config(SMOKE_CONFIG)


class FrozenClip(nn.Module):
    """CLIP with frozen weights: gradients reach the input image, never the parameters.

    ``encode_image`` takes generator output (B, 3, H, W) in [-1, 1]; ``encode_text`` takes
    prompts. Both return L2-normalised (B, D) embeddings.
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,  # an open_clip CLIP with its preprocess config attached
        tokenizer: Any,  # open_clip tokenizer: list[str] -> (B, context_length) int64
        *,
        preprocess: PreprocessMode = "resize",  # default image preprocessing mode
    ) -> None:
        super().__init__()
        _check_mode(preprocess, PREPROCESS_MODES, "preprocess")
        self.model = model
        visual = getattr(model, "visual", None)
        if isinstance(visual, nn.Module):
            sequence_first_attention(visual)
        self.tokenizer = tokenizer
        self.default_preprocess: PreprocessMode = preprocess
        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", getattr(model.visual, "image_size", None))
        self.input_size: tuple[int, int] = (
            (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        )
        interpolation = str(cfg.get("interpolation", "bicubic"))
        self.interpolation = interpolation if interpolation in _RESAMPLE_MODES else "bicubic"
        mean = cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = cfg.get("std", open_clip.OPENAI_DATASET_STD)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()
        # Read off an output: the attribute holding it differs between open_clip model classes.
        self.embed_dim = int(self.encode_text([""]).shape[-1])

    def train(self, mode: bool = True) -> FrozenClip:
        """Stay in eval mode: the loss must not depend on dropout or training-only paths."""
        return super().train(False)

    def preprocess(self, images: Tensor, mode: PreprocessMode | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, S, S) CLIP input, differentiable in ``images``."""
        mode = mode or self.default_preprocess
        _check_mode(mode, PREPROCESS_MODES, "preprocess")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if mode == "upstream":
            return upstream_preprocess(images, self.input_size)
        x = (images + 1) / 2  # [-1, 1] -> [0, 1]
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(
                x,
                size=self.input_size,
                mode=self.interpolation,
                align_corners=False,
                antialias=True,
            )
        return (x - self.mean) / self.std

    def encode_image(self, images: Tensor, mode: PreprocessMode | None = None) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) unit vectors."""
        x = self.preprocess(images, mode)
        feats = self.model.encode_image(x)  # type: ignore[operator]  # (B, D)
        return F.normalize(feats.float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Prompts -> (B, D) unit vectors (no graph: text targets are constants)."""
        if isinstance(texts, str) or not texts:
            raise ValueError("encode_text takes a non-empty list of strings")
        tokens = self.tokenizer(list(texts)).to(self.mean.device)  # (B, context_length)
        feats = self.model.encode_text(tokens)  # type: ignore[operator]  # (B, D)
        return F.normalize(feats.float(), dim=-1)


def sequence_first_attention(visual: nn.Module) -> int:
    """Run the image tower's transformer sequence-first; returns the attention layers switched.

    open_clip runs it batch-first, and ``nn.MultiheadAttention`` then transposes its input to
    sequence-first without a copy: for a batch of B > 1 images that non-contiguous input turns
    each projection into a batched matmul that re-reads the weight once per token (50 times for
    ViT-B/32), so a batch of edits ran CLIP slower per image than one edit. Sequence-first, the
    transformer makes one contiguous copy up front and every projection is a single matmul over
    all B * L tokens. Same weights, same result; a flag change only (TorchScript-safe).
    """
    transformer = getattr(visual, "transformer", None)
    if not isinstance(transformer, nn.Module) or not getattr(transformer, "batch_first", False):
        return 0
    attention = [m for m in transformer.modules() if isinstance(m, nn.MultiheadAttention)]
    if not all(m.batch_first for m in attention):
        return 0
    setattr(transformer, "batch_first", False)  # noqa: B010  (a plain attribute of open_clip's)
    for module in attention:
        module.batch_first = False
    return len(attention)


def upstream_preprocess(images: Tensor, input_size: tuple[int, int]) -> Tensor:
    """The official loss input: nearest ×7 upsample, average pool, no normalisation.

    The official kernel is ``stylegan_size // 32``, i.e. ``H * 7 // 224`` for ViT-B/32; writing it
    as ``H * 7 // S`` gives the same number at S = 224 and lets smaller test models use it.
    """
    height = images.shape[-2]
    kernel = height * UPSTREAM_UPSAMPLE // input_size[0]
    if kernel < 1:
        raise ValueError(f"images of {height} px are too small for the upstream preprocessing")
    x = F.interpolate(images, scale_factor=UPSTREAM_UPSAMPLE, mode="nearest")
    x = F.avg_pool2d(x, kernel_size=kernel)
    if tuple(x.shape[-2:]) != input_size:
        raise ValueError(
            f"upstream preprocessing maps {tuple(images.shape[-2:])} px to "
            f"{tuple(x.shape[-2:])}, not CLIP's {input_size}; use the 'resize' mode"
        )
    return x


def clip_loss(image_emb: Tensor, target_emb: Tensor, mode: LossMode = "cosine") -> Tensor:
    """Per-image CLIP distance (B,): ``1 - cos`` or the official ``1 - cos * exp(0.07)``.

    ``image_emb`` (B, D); ``target_emb`` (D,), (1, D) or (B, D). Both are normalised here, so raw
    audio-encoder outputs can be passed. The upstream factor only rescales the loss (it reads as
    a slip for the logit scale 1/0.07) but changes its balance against the L2 and identity terms.
    """
    _check_mode(mode, LOSS_MODES, "loss mode")
    target = target_emb.reshape(1, -1) if target_emb.ndim == 1 else target_emb
    if image_emb.ndim != 2 or target.shape[-1] != image_emb.shape[-1]:
        raise ValueError(
            f"embedding shapes do not match: {tuple(image_emb.shape)} vs {tuple(target_emb.shape)}"
        )
    cos = (F.normalize(image_emb, dim=-1) * F.normalize(target, dim=-1)).sum(-1)  # (B,)
    if mode == "upstream":
        return 1 - cos * UPSTREAM_COS_SCALE
    return 1 - cos


def random_clip(
    seed: int = 0,
    *,
    model_name: str = SMOKE_MODEL,
    device: str | torch.device = "cpu",
    preprocess: PreprocessMode = "resize",
) -> FrozenClip:
    """A seeded random-weight CLIP (the smoke profile); leaves the global RNG untouched."""
    if model_name == SMOKE_MODEL:
        register_smoke_config()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    tokenizer = open_clip.get_tokenizer(model_name)
    return FrozenClip(model, tokenizer, preprocess=preprocess).to(device)


def load_clip(
    model_name: str = "ViT-B-32",
    checkpoint: Path | None = None,
    *,
    device: str | torch.device = "cpu",
    quick_gelu: bool = True,
    preprocess: PreprocessMode = "resize",
) -> FrozenClip:
    """CLIP with weights from a local file (no download happens here).

    ``checkpoint`` is OpenAI's TorchScript ``ViT-B-32.pt`` or a plain state dict (``.pt``,
    ``.bin``, ``.safetensors``). ``quick_gelu`` must be True for OpenAI's weights: they were
    trained with QuickGELU and the architecture config defaults to GELU, which loads without
    error but gives wrong embeddings. Without a checkpoint the weights are random.
    """
    if model_name == SMOKE_MODEL:
        register_smoke_config()
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown CLIP model {model_name!r}; choose one of {open_clip.list_models()}"
        )
    model = open_clip.create_model(
        model_name, pretrained=None, device="cpu", force_quick_gelu=quick_gelu
    )
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"CLIP checkpoint not found: {checkpoint}")
        state = dict(_read_state_dict(checkpoint))
        # Buffers the model rebuilds itself (e.g. the causal mask) may be saved by TorchScript.
        persistent = set(model.state_dict())
        for name, _ in model.named_buffers():
            if name not in persistent:
                state.pop(name, None)
        model.load_state_dict(state, strict=True)
        logger.info("loaded CLIP %s from %s", model_name, checkpoint)
    tokenizer = open_clip.get_tokenizer(model_name)
    return FrozenClip(model, tokenizer, preprocess=preprocess).to(device)


def _read_state_dict(path: Path) -> Mapping[str, Tensor]:
    """Tensors of a CLIP checkpoint, never unpickling arbitrary objects.

    OpenAI's release is a TorchScript archive, which ``torch.load(weights_only=True)`` refuses;
    ``torch.jit.load`` reads it without running Python code. Everything else goes through
    open_clip's loader with ``weights_only=True``.
    """
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still read
            scripted = torch.jit.load(str(path), map_location="cpu")
        state = {k: v.float() for k, v in scripted.state_dict().items()}
        for key in _JIT_EXTRA_KEYS:
            state.pop(key, None)
        return state
    loaded = open_clip.factory.load_state_dict(str(path), device="cpu", weights_only=True)
    return cast(Mapping[str, Tensor], loaded)


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a ``code/`` folder and ``constants.pkl``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _check_mode(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {list(choices)}")
