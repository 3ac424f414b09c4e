"""The ML side: StyleGAN2, CLIP, the audio encoder, losses and the latent optimiser.

The public helpers are imported lazily so that light modules (``models.profiles``,
``models.weights``) can be used by the API process without importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "load_generator": "models.checkpoints",
    "load_audio_encoder": "models.audio_encoder",
    "audio_input": "models.audio",
    "decode_audio": "models.audio",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
