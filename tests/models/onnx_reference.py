"""onnxruntime sessions of the bundled face models, the reference for their PyTorch versions.

The shipped graphs need two repairs before onnxruntime runs them, neither of which changes
what they compute: (1) the SFace graph still lists its original float weights as graph inputs
although nothing reads them; (2) some DequantizeLinear nodes quantise a whole tensor as one
block with a size-1 scale, which onnxruntime only accepts as plain per-tensor quantisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def reference_session(path: Path, input_name: str) -> ort.InferenceSession:
    """A single-threaded session of ``path`` taking ``input_name`` at any spatial size."""
    model = onnx.load(str(path))
    for stale in [i for i in model.graph.input if i.name != input_name]:
        model.graph.input.remove(stale)
    for graph_input in model.graph.input:
        for dim in graph_input.type.tensor_type.shape.dim[2:]:
            dim.dim_param = "side"
    for graph_output in model.graph.output:
        for dim in graph_output.type.tensor_type.shape.dim[1:2]:
            dim.dim_param = "cells"
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        if numpy_helper.to_array(initializers[node.input[1]]).size != 1:
            continue
        for attr in [a for a in node.attribute if a.name in ("block_size", "axis")]:
            node.attribute.remove(attr)
        for name in node.input[1:]:
            scalar = numpy_helper.to_array(initializers[name]).reshape(())
            initializers[name].CopyFrom(numpy_helper.from_array(np.array(scalar), name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
