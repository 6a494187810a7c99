"""ONNX files as models (onnxruntime behind the nn.Module interface handlers call), and
package files found without importing their package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handlers.errors import ModelLoadError
from handlers.loading import build_model, resolve_path
from handlers.onnx_model import OnnxModel
from handlers.spec import ModelSource
from tests.fixtures.specs import ROOT

U2NETP = "pkg://rembg/u2netp.onnx"  # fixed batch size of 1, seven outputs
SILERO_ONNX = "pkg://silero_vad/data/silero_vad.onnx"  # three inputs, one an int64 scalar


@pytest.fixture(scope="module")
def u2netp() -> OnnxModel:
    model, categories = build_model(ModelSource(onnx=U2NETP))
    assert isinstance(model, OnnxModel) and categories is None
    return model


def test_outputs_come_back_as_torch_tensors_in_graph_order(u2netp: OnnxModel) -> None:
    outputs = u2netp(torch.zeros(1, 3, 320, 320))
    assert isinstance(outputs, tuple) and len(outputs) == 7
    assert all(o.shape == (1, 1, 320, 320) and o.dtype == torch.float32 for o in outputs)


def test_a_graph_fixed_to_batch_one_still_takes_batches(u2netp: OnnxModel) -> None:
    torch.manual_seed(0)
    images = torch.randn(3, 3, 320, 320)
    batch = u2netp(images)[0]
    singles = torch.cat([u2netp(image[None])[0] for image in images])
    assert batch.shape == (3, 1, 320, 320)
    assert torch.allclose(batch, singles, atol=1e-6)


def test_several_inputs_of_several_types() -> None:
    model = OnnxModel(resolve_path(SILERO_ONNX))
    probability, state = model(torch.zeros(2, 576), torch.zeros(2, 2, 128), torch.tensor(16000))
    assert probability.shape == (2, 1) and 0 <= float(probability.max()) <= 1
    assert state.shape == (2, 2, 128)


def test_unreadable_onnx_files_are_load_errors(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelLoadError, match="Cannot load ONNX file"):
        build_model(ModelSource(onnx=str(bad)))
    with pytest.raises(ModelLoadError, match="not found"):
        build_model(ModelSource(onnx=str(tmp_path / "missing.onnx")))


def test_onnx_is_a_fourth_exclusive_source() -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        ModelSource(onnx="m.onnx", torchscript="m.pt")


def test_package_files_are_found_without_importing_the_package() -> None:
    # rembg's __init__ imports OpenCV and facenet_pytorch's wants tqdm: neither is installed.
    code = (
        "import sys\n"
        "from handlers.loading import resolve_path\n"
        "print(resolve_path('pkg://rembg/u2netp.onnx').stat().st_size > 1e6,"
        " resolve_path('pkg://facenet_pytorch/data/onet.pt').is_file(),"
        " [m for m in ('rembg', 'facenet_pytorch') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True True []"


def test_a_missing_package_is_named() -> None:
    with pytest.raises(ModelLoadError, match=r"'no_such_package' .* is not installed"):
        resolve_path("pkg://no_such_package/model.onnx")
