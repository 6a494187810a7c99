"""An ONNX file served as a model: onnxruntime behind an ``nn.Module`` face.

Handlers call models with torch tensors and read torch tensors back; :class:`OnnxModel`
keeps that contract, so an ONNX export is served by the same handlers, batching and answer
shapes as a PyTorch model (TorchServe serves ONNX files too). onnxruntime runs on the CPU, or
on CUDA where its GPU build is installed; it uses as many threads as torch was given, so a
replica's ``torch_threads`` (or Ray's ``num_cpus``) bounds it the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from handlers.errors import ModelLoadError

# onnxruntime's element type names -> numpy dtypes the inputs are cast to.
_INPUT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OnnxModel(nn.Module):
    """Runs an ONNX graph: ``forward(*inputs)`` takes and returns torch tensors.

    The inputs are the graph's inputs in order. One output comes back as a tensor, several as
    a tuple in the graph's order. A graph exported with a fixed batch size of 1 (common: U²-Net's
    ``u2netp.onnx``) is run once per item of a larger batch and the results are concatenated.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ModelLoadError("Serving an ONNX file needs onnxruntime: pip install onnxruntime") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        providers = [
            p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
        ]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported graphs
            raise ModelLoadError(f"Cannot load ONNX file {path}: {exc}") from exc
        self.inputs = self.session.get_inputs()
        self.output_names = [o.name for o in self.session.get_outputs()]
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        self.single_item = first == 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the ONNX graph takes {len(self.inputs)} inputs, got {len(inputs)}")
        arrays = [
            t.detach().cpu().contiguous().numpy().astype(_INPUT_DTYPES.get(spec.type, np.float32), copy=False)
            for t, spec in zip(inputs, self.inputs, strict=True)
        ]
        batch = arrays[0].shape[0] if arrays and arrays[0].ndim else 1
        if self.single_item and batch > 1:
            parts = [self._run([a[i : i + 1] for a in arrays]) for i in range(batch)]
            outputs = [np.concatenate(chunks) for chunks in zip(*parts, strict=True)]
        else:
            outputs = self._run(arrays)
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outputs)
        return tensors[0] if len(tensors) == 1 else tensors

    def _run(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        feed = {spec.name: array for spec, array in zip(self.inputs, arrays, strict=True)}
        return self.session.run(self.output_names, feed)
