"""The handler lifecycle's contract: warm-up that follows the model, items in postprocess,
configuration faults reported as such."""

from __future__ import annotations

import logging

import pytest
import torch

from handlers.errors import ConfigError
from handlers.handler_catalog import create_handler
from tests.fixtures.specs import tiny_spec


def mnist_spec(handler: str) -> object:
    return tiny_spec(
        handler=handler,
        source={"factory": "tests.fixtures.models:mnist_net"},
        preprocess={"resize": None, "crop": None, "mean": [0.5] * 3, "std": [0.5] * 3},
        warmup=True,
    )


def test_warmup_probe_follows_the_handlers_preprocessing(
    caplog: pytest.LogCaptureFixture, cat_png: bytes
) -> None:
    handler = create_handler(mnist_spec("tests.fixtures.handlers:GrayscaleClassifier"))
    with caplog.at_level(logging.WARNING, logger="raytorch.handlers"):
        handler.load()
    assert "skipped" not in caplog.text  # the probe was a 1x28x28 image, as real requests are
    assert len(handler.predict(cat_png)) == 3


def test_a_probe_that_does_not_fit_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    # The plain image_classifier sends 3 channels to a 1-channel network: the probe fails,
    # and the model still loads (TorchServe's MNIST archive broke here).
    handler = create_handler(mnist_spec("image_classifier"))
    with caplog.at_level(logging.WARNING, logger="raytorch.handlers"):
        handler.load()
    assert handler.model is not None
    assert "Warm-up of model tiny version 1.0 skipped" in caplog.text


def test_postprocess_receives_the_preprocessed_items(cat_png: bytes, coffee_png: bytes) -> None:
    handler = create_handler(
        tiny_spec(
            handler="tests.fixtures.handlers:SizeReportingClassifier", preprocess={"resize": 40, "crop": None}
        )
    )
    handler.load()
    cat, coffee = handler.predict_batch([handler.preprocess(cat_png), handler.preprocess(coffee_png)])
    assert "input (3, 40, 60)" in cat and "input (3, 40, 60)" in coffee  # both photos are 3:2


def test_cuda_without_a_gpu_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    handler = create_handler(tiny_spec(device="cuda"))
    with pytest.raises(ConfigError, match="no GPU is visible") as info:
        handler.load()
    assert info.value.status == 400
