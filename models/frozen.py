"""Frozen networks: the generator, CLIP and the encoders are never trained by an edit."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def freeze(module: ModuleT) -> ModuleT:
    """Eval mode (BN on running statistics) and no parameter gradients; returns ``module``.

    Autograd then computes gradients for the optimised latent only, not for the weights.
    """
    module.eval()
    module.requires_grad_(False)
    return module
