"""Load StyleGAN2 generators from rosinality ``.pt`` files and NVIDIA network pickles.

The format is read from the file's content, never its name. NVIDIA pickles embed their
source code and normally execute it on load; here they go through a restricted unpickler
that knows a handful of tensor-rebuilding globals, keeps the embedded source as inert text,
and refuses everything else before it runs. Both formats end up in ``Generator``'s
(rosinality) layout, computed in float32 (fp16 blocks of NVIDIA pickles included).
"""

from __future__ import annotations

import argparse
import io
import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.frozen import freeze
from models.stylegan2 import MAPPING_LR_MUL, UP, Generator, compute_w_avg

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) container
# The first record of torch.save's legacy (pre-1.6) format: pickle protocol 2 of a magic int.
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
PICKLE_PROTO = 0x80  # opcode that opens every pickle of protocol >= 2
NUMERIC_DTYPE_KINDS = "biufc"  # numpy scalars allowed in a pickle: bool, ints, floats, complex
RGB = 3


class CheckpointError(ValueError):
    """The file is not a generator checkpoint this loader accepts (or it is unsafe)."""


# --------------------------------------------------------------------------- NVIDIA pickles


@dataclass
class PersistentState:
    """What ``torch_utils.persistence`` pickled for one module: its class name and __dict__."""

    class_name: str
    state: dict[str, Any] = field(repr=False)


class _PlainDict(dict[Any, Any]):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict subclass) found in trained pickles."""


def _reconstruct_persistent_obj(meta: Any) -> PersistentState:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError("unexpected persistent-object record in the pickle")
    class_name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(class_name, str) or not isinstance(state, dict):
        raise CheckpointError("persistent-object record lacks class_name/state")
    return PersistentState(class_name, state)  # module_src is dropped, never executed


def _load_from_bytes(data: Any) -> Any:
    if not isinstance(data, bytes):
        raise CheckpointError("embedded storage is not bytes")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # the weights-only unpickler refuses anything but storages
        raise CheckpointError(f"embedded tensor storage refused: {exc}") from exc


def _rebuild_tensor(
    storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any, hooks: Any, *_: Any
) -> Tensor:
    if not isinstance(storage, torch.TypedStorage | torch.UntypedStorage):
        raise CheckpointError("tensor record does not point at a storage")
    if hooks:
        raise CheckpointError("tensor record carries backward hooks")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())


def _rebuild_parameter(data: Any, requires_grad: Any, hooks: Any, *_: Any) -> Tensor:
    if not isinstance(data, Tensor) or hooks:
        raise CheckpointError("parameter record is not a plain tensor")
    return data


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype[Any]:
    dtype = np.dtype(spec, align, copy)
    if dtype.kind not in NUMERIC_DTYPE_KINDS:
        raise CheckpointError(f"numpy dtype {dtype} is not allowed in a pickle")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_DTYPE_KINDS:
        raise CheckpointError("numpy scalar of a non-numeric dtype")
    if not isinstance(data, bytes) or len(data) != dtype.itemsize:
        raise CheckpointError("malformed numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


# The only globals a StyleGAN2 network pickle may name, each mapped to a checked stand-in.
# Besides the ones in the reference pickle: EasyDict (a dict) sits in the constructor kwargs
# that training runs record, and protocol-3 pickles (Python 3.7) spell empty sets as set().
ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy", "dtype"): _numpy_dtype,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("dnnlib.util", "EasyDict"): _PlainDict,
    ("builtins", "set"): set,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``ALLOWED_GLOBALS``; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            hint = (
                " (a TensorFlow StyleGAN2 pickle: convert it with stylegan2-ada-pytorch's "
                "legacy.py in a trusted environment first)"
                if module.startswith("dnnlib.tflib")
                else ""
            )
            raise CheckpointError(
                f"refused global {module}.{name} in pickle: only StyleGAN2 network pickles "
                f"(stylegan2-ada-pytorch / stylegan3 layout) are accepted{hint}"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError("persistent ids are not allowed in a network pickle")


def read_network_pickle(path: str | Path) -> dict[str, Any]:
    """Unpickle an NVIDIA network pickle without importing or running any of its code."""
    with open(path, "rb") as f:
        try:
            data = RestrictedUnpickler(f).load()
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable network pickle: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: pickle holds {type(data).__name__}, expected a dict")
    return data


def _flatten(
    obj: PersistentState, prefix: str, tensors: dict[str, Tensor], modules: dict[str, Any]
) -> None:
    """Walk a persistent module tree into state-dict tensors and per-module records."""
    modules[prefix.rstrip(".")] = obj
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or name in skip:
                continue
            if not isinstance(t, Tensor):
                raise CheckpointError(f"{prefix}{name} is not a tensor")
            tensors[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentState):
            raise CheckpointError(f"{prefix}{name} is not a persistent module")
        _flatten(child, f"{prefix}{name}.", tensors, modules)


def _single(values: set[Any], what: str) -> Any:
    if len(values) != 1:
        raise CheckpointError(f"layers disagree on {what}: {sorted(map(str, values))}")
    return next(iter(values))


def generator_from_network_pickle(data: Mapping[str, Any]) -> Generator:
    """Build a Generator from an unpickled network pickle's ``G_ema`` (StyleGAN2 only)."""
    g = data.get("G_ema")
    if not isinstance(g, PersistentState):
        raise CheckpointError("network pickle has no G_ema generator")
    settings = g.state
    c_dim = int(settings.get("c_dim", 0))
    if c_dim:
        raise CheckpointError(f"class-conditional generator (c_dim={c_dim}) is not supported")
    img_channels = int(settings.get("img_channels", RGB))
    if img_channels != RGB:
        raise CheckpointError(f"only RGB generators are supported (img_channels={img_channels})")
    tensors: dict[str, Tensor] = {}
    modules: dict[str, PersistentState] = {}
    _flatten(g, "", tensors, modules)

    synthesis = modules.get("synthesis")
    if synthesis is None or synthesis.class_name != "SynthesisNetwork":
        raise CheckpointError("G_ema has no StyleGAN2 synthesis network")
    blocks = [
        (n, m) for n, m in modules.items() if n.count(".") == 1 and n.startswith("synthesis.")
    ]
    others = sorted({m.class_name for _, m in blocks if m.class_name != "SynthesisBlock"})
    if others or not blocks:
        raise CheckpointError(
            f"synthesis is not StyleGAN2 (found {others or 'no blocks'}; StyleGAN3 pickles "
            "are not supported)"
        )
    arch = _single({m.state.get("architecture") for _, m in blocks}, "architecture")
    if arch != "skip":
        raise CheckpointError(f"only the 'skip' synthesis architecture is supported, got {arch!r}")
    layers = [m for m in modules.values() if m.class_name in ("SynthesisLayer", "ToRGBLayer")]
    conv_clamp = _single({m.state.get("conv_clamp") for m in layers}, "conv_clamp")
    acts = {m.state.get("activation") for m in layers if m.class_name == "SynthesisLayer"}
    if _single(acts, "activation") != "lrelu":
        raise CheckpointError(f"unsupported synthesis activation {acts}")
    fcs = [m for n, m in modules.items() if re.fullmatch(r"mapping\.fc\d+", n)]
    if {m.state.get("activation") for m in fcs} != {"lrelu"}:
        raise CheckpointError("mapping layers must use leaky ReLU")
    lr_mul = float(_single({float(m.state.get("bias_gain", 0)) for m in fcs}, "mapping lr"))
    if lr_mul <= 0:
        raise CheckpointError(f"mapping lr multiplier must be positive, got {lr_mul}")

    gen = generator_from_nvidia_state(
        tensors,
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        mapping_lr_mul=lr_mul,
    )
    num_ws = settings.get("num_ws")
    if num_ws is not None and int(num_ws) != gen.n_latent:
        raise CheckpointError(f"num_ws {num_ws} does not match n_latent {gen.n_latent}")
    return gen


# --------------------------------------------------------------------------- state dicts


def _float32(sd: Mapping[str, Any]) -> dict[str, Tensor]:
    """CPU float32 copies of a state dict's tensors (fp16 checkpoints run in fp32 here)."""
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"state dict entries are not tensors: {sorted(bad)[:10]}")
    return {k: v.detach().to("cpu", torch.float32) for k, v in sd.items()}


class _Keys:
    """Pops keys from a state dict so that leftovers (unexpected keys) can be reported."""

    def __init__(self, sd: Mapping[str, Tensor]) -> None:
        self.left = _float32(sd)

    def take(self, key: str) -> Tensor:
        try:
            return self.left.pop(key)
        except KeyError:
            raise CheckpointError(f"missing key {key!r}") from None

    def take_opt(self, key: str) -> Tensor | None:
        return self.left.pop(key, None)

    def finish(self) -> None:
        if self.left:
            raise CheckpointError(f"unexpected keys: {sorted(self.left)[:10]}")


def _count(sd: Mapping[str, Any], pattern: str) -> int:
    return sum(1 for k in sd if re.fullmatch(pattern, k))


def _build(sd: dict[str, Tensor], **kwargs: Any) -> Generator:
    """Instantiate and adopt ``sd`` strictly, leaving the global RNG as it was."""
    try:
        with torch.random.fork_rng(devices=[]):
            gen = Generator(**kwargs)
        gen.load_state_dict(sd, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"state dict does not fit a StyleGAN2 generator: {exc}") from exc
    return gen


def generator_from_nvidia_state(
    sd: Mapping[str, Tensor],
    *,
    conv_clamp: float | None = None,
    mapping_lr_mul: float = MAPPING_LR_MUL,
) -> Generator:
    """Convert a stylegan2-ada-pytorch ``G_ema`` state dict; every key must be consumed.

    Sizes come from the tensors. NVIDIA's up-sampling conv is the same transposed conv as
    ours (no flip); noise_strength [] -> noise.weight [1]; noise_const [R, R] -> [1, 1, R, R];
    resample filters (sum 1) x4 become our up-sampling kernels.
    """
    keys = _Keys(sd)
    n_mapping = _count(sd, r"mapping\.fc\d+\.weight")
    res_list = sorted(
        int(m[1]) for k in sd if (m := re.fullmatch(r"synthesis\.b(\d+)\.torgb\.weight", k))
    )
    if not n_mapping or not res_list:
        raise CheckpointError("not a StyleGAN2 G_ema state dict (no mapping.fc* / synthesis.b*)")
    out: dict[str, Tensor] = {}
    for i in range(n_mapping):
        out[f"style.{i + 1}.weight"] = keys.take(f"mapping.fc{i}.weight")
        out[f"style.{i + 1}.bias"] = keys.take(f"mapping.fc{i}.bias")
    out["w_avg"] = keys.take("mapping.w_avg")

    def layer(src: str, dst: str, noise_idx: int, res: int) -> None:
        out[f"{dst}.conv.weight"] = keys.take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = keys.take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = keys.take(f"{src}.affine.bias")
        out[f"{dst}.activate.bias"] = keys.take(f"{src}.bias")
        strength = keys.take_opt(f"{src}.noise_strength")  # absent when use_noise=False
        const = keys.take_opt(f"{src}.noise_const")
        out[f"{dst}.noise.weight"] = torch.zeros(1) if strength is None else strength.reshape(1)
        const = torch.zeros(res, res) if const is None else const
        out[f"noises.noise_{noise_idx}"] = const.reshape(1, 1, res, res)
        filt = keys.take(f"{src}.resample_filter")
        if ".conv0" in src:
            out[f"{dst}.conv.blur.kernel"] = filt * UP**2

    def torgb(src: str, dst: str, block_filter: Tensor | None) -> None:
        out[f"{dst}.conv.weight"] = keys.take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = keys.take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = keys.take(f"{src}.affine.bias")
        out[f"{dst}.bias"] = keys.take(f"{src}.bias").reshape(1, RGB, 1, 1)
        if block_filter is not None:
            out[f"{dst}.upsample.kernel"] = block_filter * UP**2

    first = res_list[0]
    const = keys.take(f"synthesis.b{first}.const")
    out["input.input"] = const.unsqueeze(0)
    keys.take(f"synthesis.b{first}.resample_filter")  # unused: nothing to up-sample into b4
    layer(f"synthesis.b{first}.conv1", "conv1", 0, first)
    torgb(f"synthesis.b{first}.torgb", "to_rgb1", None)
    channels = {first: int(const.shape[0])}
    for j, res in enumerate(res_list[1:]):
        b = f"synthesis.b{res}"
        layer(f"{b}.conv0", f"convs.{2 * j}", 2 * j + 1, res)
        layer(f"{b}.conv1", f"convs.{2 * j + 1}", 2 * j + 2, res)
        torgb(f"{b}.torgb", f"to_rgbs.{j}", keys.take(f"{b}.resample_filter"))
        channels[res] = int(out[f"convs.{2 * j + 1}.conv.weight"].shape[1])
    keys.finish()

    fc0, fc_last = out["style.1.weight"], out[f"style.{n_mapping}.weight"]
    return _build(
        out,
        resolution=res_list[-1],
        channels=channels,
        z_dim=int(fc0.shape[1]),
        w_dim=int(fc_last.shape[0]),
        n_mapping=n_mapping,
        mapping_dim=int(fc0.shape[0]),
        mapping_lr_mul=mapping_lr_mul,
        conv_clamp=conv_clamp,
    )


def generator_from_rosinality_state(
    sd: Mapping[str, Tensor],
    latent_avg: Tensor | None = None,
    *,
    mapping_lr_mul: float = MAPPING_LR_MUL,
) -> Generator:
    """Build from a rosinality ``g_ema`` state dict (sizes read from the tensors).

    The files do not record the mapping lr multiplier; rosinality trains with 0.01. Without
    ``latent_avg`` the average latent is estimated from 4096 seeded z.
    """
    n_mapping = _count(sd, r"style\.\d+\.weight")
    n_convs = _count(sd, r"convs\.\d+\.conv\.weight")
    if not n_mapping or "input.input" not in sd or n_convs % 2:
        raise CheckpointError("not a rosinality StyleGAN2 g_ema state dict")
    out = _float32(sd)
    channels = {4: int(out["input.input"].shape[1])}
    for j in range(n_convs // 2):
        channels[4 * UP ** (j + 1)] = int(out[f"convs.{2 * j}.conv.weight"].shape[1])
    fc0, fc_last = out["style.1.weight"], out[f"style.{n_mapping}.weight"]
    w_dim = int(fc_last.shape[0])
    if latent_avg is not None:
        if latent_avg.numel() != w_dim:
            raise CheckpointError(f"latent_avg has {latent_avg.numel()} values, w_dim is {w_dim}")
        out["w_avg"] = latent_avg.detach().to("cpu", torch.float32).reshape(w_dim)
    else:
        out["w_avg"] = torch.zeros(w_dim)
    gen = _build(
        out,
        resolution=max(channels),
        channels=channels,
        z_dim=int(fc0.shape[1]),
        w_dim=w_dim,
        n_mapping=n_mapping,
        mapping_dim=int(fc0.shape[0]),
        mapping_lr_mul=mapping_lr_mul,
    )
    if latent_avg is None:
        log.warning("checkpoint has no latent_avg; estimating it from 4096 seeded z")
        gen.w_avg.copy_(compute_w_avg(gen))
    return gen


# --------------------------------------------------------------------------- entry point


def detect_format(path: str | Path) -> str:
    """ "torch" (zip or legacy torch.save) or "pickle" (NVIDIA network pickle), by content."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_TORCH_MAGIC))
    if head.startswith(ZIP_MAGIC) or head == LEGACY_TORCH_MAGIC:
        return "torch"
    if head[:1] == bytes([PICKLE_PROTO]):
        return "pickle"
    raise CheckpointError(f"{path}: neither a torch checkpoint nor a network pickle")


def _load_torch_checkpoint(path: str | Path) -> Generator:
    try:  # rosinality training checkpoints also pickle their argparse options
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: torch checkpoint refused or unreadable: {exc}") from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), Mapping):
        found = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected a rosinality checkpoint with 'g_ema', got {found}")
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise CheckpointError(f"{path}: latent_avg is not a tensor")
    return generator_from_rosinality_state(ckpt["g_ema"], latent_avg)


def load_generator(path: str | Path, map_location: str | torch.device = "cpu") -> Generator:
    """Load a StyleGAN2 generator (eval mode, frozen) from a rosinality .pt or NVIDIA .pkl."""
    try:
        if detect_format(path) == "torch":
            gen = _load_torch_checkpoint(path)
        else:
            gen = generator_from_network_pickle(read_network_pickle(path))
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: malformed generator checkpoint: {exc}") from exc
    return freeze(gen.to(map_location))
