"""Checkpoint loaders: NVIDIA pickle parity with stylegan2-ada-pytorch's goldens, full-size
key sets, format detection by content, and the restricted unpickler's refusals."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.checkpoints import (
    CheckpointError,
    PersistentState,
    generator_from_network_pickle,
    generator_from_nvidia_state,
    load_generator,
    read_network_pickle,
)
from models.stylegan2 import Generator
from tests.conftest import GOLDEN
from tests.models.conftest import max_err

log = logging.getLogger(__name__)

TOL = 1e-4  # max abs error allowed against the upstream implementation's outputs
TRUNCATION = 0.7  # the psi the goldens were made with
NVIDIA_PICKLES = ["stylegan2_nvidia_64px", "stylegan2_nvidia_64px_clamp"]
FULL_RES, FULL_N_LATENT = 1024, 18
FFHQ_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64, 1024: 32}


pytestmark = pytest.mark.usefixtures("one_thread")


def random_state(shapes: dict[str, list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=rng) for k, s in shapes.items()}


# --------------------------------------------------------------------------- NVIDIA goldens


@pytest.fixture(scope="module", params=NVIDIA_PICKLES)
def nvidia(request: pytest.FixtureRequest) -> tuple[str, Generator, dict[str, np.ndarray]]:
    name: str = request.param
    io = dict(np.load(GOLDEN / f"{name}_io.npz"))
    return name, load_generator(GOLDEN / f"{name}.pkl"), io


Case = Callable[[Generator, dict[str, np.ndarray]], tuple[torch.Tensor, str]]
NVIDIA_CASES: dict[str, Case] = {
    "w_avg": lambda g, io: (g.w_avg, "w_avg"),
    "ws": lambda g, io: (g.broadcast(g.mapping(torch.from_numpy(io["z"]))), "ws"),
    "ws_trunc": lambda g, io: (
        g.broadcast(g.mapping(torch.from_numpy(io["z"]), TRUNCATION)),
        "ws_trunc",
    ),
    "img": lambda g, io: (g.synthesis(torch.from_numpy(io["ws"]), "const"), "img"),
    "img_random": lambda g, io: (g.synthesis(torch.from_numpy(io["ws_random"])), "img_random"),
    "img_trunc": lambda g, io: (g.synthesis(torch.from_numpy(io["ws_trunc"])), "img_trunc"),
}


@pytest.mark.parametrize("case", sorted(NVIDIA_CASES))
def test_nvidia_golden(
    nvidia: tuple[str, Generator, dict[str, np.ndarray]],
    case: str,
    record_property: Callable[[str, object], None],
) -> None:
    name, g, io = nvidia
    with torch.no_grad():
        ours, key = NVIDIA_CASES[case](g, io)
    err = max_err(ours, io[key])
    record_property("max_abs_err", err)
    log.info("%s %s: max abs err %.3g", name, case, err)
    assert err <= TOL


def test_nvidia_settings_and_frozen(nvidia: tuple[str, Generator, dict[str, np.ndarray]]) -> None:
    name, g, _ = nvidia
    assert (g.resolution, g.n_latent, g.z_dim, g.w_dim) == (64, 10, 512, 512)
    assert g.conv_clamp == (0.5 if name.endswith("clamp") else None)
    assert not g.training and not any(p.requires_grad for p in g.parameters())
    assert "torch_utils" not in sys.modules  # the embedded source was never imported


# --------------------------------------------------------------------------- full-size key sets


def test_rosinality_full_size_key_set(tmp_path: Path) -> None:
    spec = json.loads((GOLDEN / "shapes_stylegan2_ffhq1024_rosinality.json").read_text())
    sd = random_state(spec["state_dict"])
    latent_avg = torch.randn(sd["style.8.weight"].shape[0])
    path = tmp_path / "ffhq.pt"
    torch.save({"g_ema": sd, "latent_avg": latent_avg}, path)
    g = load_generator(path)
    assert (g.resolution, g.n_latent) == (FULL_RES, spec["n_latent"]) == (FULL_RES, FULL_N_LATENT)
    assert g.channels == FFHQ_CHANNELS
    ours = g.state_dict()
    assert set(ours) == set(sd) | {"w_avg"}
    assert all(torch.equal(ours[k], sd[k]) for k in sd)
    assert torch.equal(g.w_avg, latent_avg)


def test_nvidia_full_size_key_set() -> None:
    spec = json.loads((GOLDEN / "shapes_stylegan2_ffhq1024_nvidia.json").read_text())
    sd = random_state(spec["state_dict"])
    clamp = spec["init_kwargs"]["synthesis_kwargs"]["conv_clamp"]
    g = generator_from_nvidia_state(sd, conv_clamp=clamp)
    assert (g.resolution, g.n_latent) == (FULL_RES, spec["num_ws"]) == (FULL_RES, FULL_N_LATENT)
    assert g.channels == FFHQ_CHANNELS and g.conv_clamp == clamp
    assert g.z_dim == spec["init_kwargs"]["z_dim"] and g.w_dim == spec["init_kwargs"]["w_dim"]
    ours = g.state_dict()
    assert torch.equal(ours["w_avg"], sd["mapping.w_avg"])
    assert torch.equal(ours["style.8.bias"], sd["mapping.fc7.bias"])
    assert torch.equal(ours["input.input"][0], sd["synthesis.b4.const"])
    assert torch.equal(ours["convs.14.conv.weight"][0], sd["synthesis.b1024.conv0.weight"])
    assert torch.equal(ours["convs.15.activate.bias"], sd["synthesis.b1024.conv1.bias"])
    assert torch.equal(ours["noises.noise_16"][0, 0], sd["synthesis.b1024.conv1.noise_const"])
    assert torch.equal(ours["convs.3.noise.weight"][0], sd["synthesis.b16.conv1.noise_strength"])
    assert torch.equal(ours["to_rgbs.7.bias"].flatten(), sd["synthesis.b1024.torgb.bias"])
    assert torch.equal(ours["to_rgbs.7.upsample.kernel"], sd["synthesis.b1024.resample_filter"] * 4)
    assert torch.equal(
        ours["to_rgb1.conv.modulation.weight"], sd["synthesis.b4.torgb.affine.weight"]
    )


def test_nvidia_state_rejects_unexpected_and_missing_keys() -> None:
    spec = json.loads((GOLDEN / "shapes_stylegan2_ffhq1024_nvidia.json").read_text())
    shapes = {k: v for k, v in spec["state_dict"].items() if "b1024" not in k and "b512" not in k}
    shapes = {k: v for k, v in shapes.items() if not any(f"b{r}." in k for r in (64, 128, 256))}
    sd = random_state(shapes)
    assert generator_from_nvidia_state(sd).resolution == 32
    with pytest.raises(CheckpointError, match="unexpected keys.*mapping.embed"):
        generator_from_nvidia_state({**sd, "mapping.embed.weight": torch.zeros(512, 10)})
    sd.pop("synthesis.b16.conv0.affine.bias")
    with pytest.raises(CheckpointError, match="missing key.*b16.conv0.affine.bias"):
        generator_from_nvidia_state(sd)


# --------------------------------------------------------------------------- format detection


def test_format_detected_from_content(tmp_path: Path) -> None:
    ros = shutil.copy(GOLDEN / "stylegan2_rosinality_64px.pt", tmp_path / "rosinality.pkl")
    nv = shutil.copy(GOLDEN / "stylegan2_nvidia_64px.pkl", tmp_path / "nvidia.pt")
    io = np.load(GOLDEN / "stylegan2_nvidia_64px_io.npz")
    g_ros, g_nv = load_generator(ros), load_generator(nv)
    assert g_ros.n_latent == g_nv.n_latent == 10
    with torch.no_grad():
        assert max_err(g_nv.synthesis(torch.from_numpy(io["ws"])), io["img"]) <= TOL
    bogus = tmp_path / "notes.pt"
    bogus.write_text("hello")
    with pytest.raises(CheckpointError, match="neither"):
        load_generator(bogus)


def test_torch_file_without_g_ema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(CheckpointError, match="g_ema"):
        load_generator(path)


# --------------------------------------------------------------------------- restricted unpickler


class _Payload:
    """Pickles as a call of ``func(*args)``: what a hostile network pickle would hold."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.func, self.args


def _write_pickle(path: Path, obj: Any) -> Path:
    path.write_bytes(pickle.dumps({"G_ema": obj}, protocol=4))
    return path


@pytest.mark.parametrize(
    ("func", "global_name"), [(os.system, "system"), (eval, "builtins.eval"), (exec, "exec")]
)
def test_hostile_global_is_refused(
    tmp_path: Path, func: Callable[..., Any], global_name: str
) -> None:
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').write('x')"
    arg = f"touch {marker}" if func is os.system else code
    path = _write_pickle(tmp_path / "evil.pkl", _Payload(func, arg))
    with pytest.raises(CheckpointError, match=f"refused global .*{global_name}"):
        load_generator(path)
    assert not marker.exists()


def test_load_from_bytes_cannot_smuggle_a_full_unpickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    inner = pickle.dumps(_Payload(exec, f"open({str(marker)!r}, 'w').write('x')"), protocol=2)
    path = _write_pickle(tmp_path / "evil.pkl", _Payload(torch.storage._load_from_bytes, inner))
    with pytest.raises(CheckpointError, match="embedded tensor storage refused"):
        load_generator(path)
    assert not marker.exists()


def test_torch_checkpoint_with_hostile_payload_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Payload(exec, f"open({str(marker)!r}, 'w').write('x')")}, path)
    with pytest.raises(CheckpointError, match="refused or unreadable"):
        load_generator(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- re-written pickles


def _reconstruct_persistent_obj(meta: Any) -> Any:
    raise AssertionError("only named in pickles written here, never called")


class EasyDict(dict[str, Any]):
    """Pickles under dnnlib.util.EasyDict, as training runs record their kwargs."""


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__ = "dnnlib.util"


class _Persistent:
    """Pickles a PersistentState the way torch_utils.persistence does, with hostile source."""

    def __init__(self, obj: PersistentState) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[Any, ...]:
        children = self.obj.state.get("_modules") or {}
        state = {**self.obj.state, "_modules": {k: _Persistent(v) for k, v in children.items()}}
        meta = {
            "type": "class",
            "version": 6,
            "module_src": "raise SystemExit('embedded source was executed')",
            "class_name": self.obj.class_name,
            "state": state,
        }
        return _reconstruct_persistent_obj, (meta,)


def write_network_pickle(path: Path, data: dict[str, Any], protocol: int) -> Path:
    """Pickle an unpickled network pickle again, naming the same globals as the original."""
    fakes = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
    }
    vars(fakes["torch_utils.persistence"])["_reconstruct_persistent_obj"] = (
        _reconstruct_persistent_obj
    )
    vars(fakes["dnnlib.util"])["EasyDict"] = EasyDict
    with pytest.MonkeyPatch.context() as mp:  # visible to the pickler only, then removed
        for name, module in fakes.items():
            mp.setitem(sys.modules, name, module)
        out = {k: _Persistent(v) if isinstance(v, PersistentState) else v for k, v in data.items()}
        path.write_bytes(pickle.dumps(out, protocol=protocol))
    return path


@pytest.fixture()
def golden_pickle() -> dict[str, Any]:
    return read_network_pickle(GOLDEN / "stylegan2_nvidia_64px.pkl")


@pytest.mark.parametrize("protocol", [3, 4])
def test_trained_pickle_variants_load(
    golden_pickle: dict[str, Any], tmp_path: Path, protocol: int
) -> None:
    # Training runs record EasyDict kwargs; Python 3.7 (stylegan2-ada's) pickles at protocol 3.
    golden_pickle["G_ema"].state["_init_kwargs"]["mapping_kwargs"] = EasyDict(num_layers=8)
    path = write_network_pickle(tmp_path / "trained.pkl", golden_pickle, protocol)
    assert b"dnnlib.util" in path.read_bytes()
    g = load_generator(path)
    io = np.load(GOLDEN / "stylegan2_nvidia_64px_io.npz")
    with torch.no_grad():
        assert max_err(g.synthesis(torch.from_numpy(io["ws"])), io["img"]) <= TOL
    assert "torch_utils" not in sys.modules


# --------------------------------------------------------------------------- unsupported pickles


def test_class_conditional_pickle_is_refused(golden_pickle: dict[str, Any], tmp_path: Path) -> None:
    golden_pickle["G_ema"].state["c_dim"] = 10
    path = write_network_pickle(tmp_path / "conditional.pkl", golden_pickle, protocol=4)
    with pytest.raises(CheckpointError, match="c_dim=10"):
        load_generator(path)


def test_stylegan3_pickle_is_refused(golden_pickle: dict[str, Any]) -> None:
    synthesis = golden_pickle["G_ema"].state["_modules"]["synthesis"]
    synthesis.state["_modules"] = {"input": PersistentState("SynthesisInput", {})}
    with pytest.raises(CheckpointError, match="StyleGAN3"):
        generator_from_network_pickle(golden_pickle)


def test_unexpected_tensor_in_pickle_is_refused(golden_pickle: dict[str, Any]) -> None:
    golden_pickle["G_ema"].state["_modules"]["mapping"].state["_buffers"]["extra"] = torch.ones(3)
    with pytest.raises(CheckpointError, match="unexpected keys.*mapping.extra"):
        generator_from_network_pickle(golden_pickle)
