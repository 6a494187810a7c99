"""TorchServe's examples whose archives name its default handlers, or import its metrics and
micro-batching modules, answer as on TorchServe (no Ray).

The archives are built by the real torch-model-archiver as the examples' READMEs say
(tests/fixtures/torchserve_examples.py). Each is served through raytorch's loading path, on
raytorch's ``ts`` API and on TorchServe's own; where TorchServe is installed, its own default
handler class runs in this process over the same archive and inputs, and the answers must be
equal, float for float.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from handlers.archive import extract, read_extracted
from handlers.errors import BadInputError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.torchserve.names import TS_API_ENV, check_handler_file, real_ts_installed
from tests.fixtures import torchserve_examples as ex

needs_torchserve = pytest.mark.skipif(
    not real_ts_installed(),
    reason="TorchServe is not installed here (pip install 'raytorch[torchserve-handlers]')",
)


def _forget_ts() -> None:
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        del sys.modules[name]


@pytest.fixture(params=["raytorch", "torchserve"])
def ts_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which ``ts`` our loading path gives the handler: ours, or TorchServe's when installed."""
    if request.param == "torchserve" and not real_ts_installed():
        pytest.skip("TorchServe is not installed here (pip install torchserve captum)")
    _forget_ts()
    monkeypatch.setenv(TS_API_ENV, request.param)
    yield request.param
    _forget_ts()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


def served(archive: Path, folder: Path) -> tuple[Any, Any]:
    """Extract as the management part does, check and load as a replica does."""
    found = read_extracted(extract(archive, folder))
    spec = ModelSpec.model_validate(found.model)
    check_handler_file(spec.handler, spec.base_dir)
    handler = create_handler(spec)
    handler.load()
    return found, handler


def reference(
    folder: Path, handler_class: str, rows: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> Any:
    """TorchServe's own handler's answers over the extracted archive (its package imported)."""
    _forget_ts()
    with monkeypatch.context() as patch:
        patch.setenv(TS_API_ENV, "torchserve")
        try:
            return ex.torchserve_answers(folder, handler_class, rows)
        finally:
            _forget_ts()


@pytest.fixture(scope="module")
def segmenters(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        name: ex.build_segmenter(store, tmp_path_factory.mktemp(name), name) for name in ("fcn", "deeplabv3")
    }


@pytest.fixture(scope="module")
def detectors(store: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        name: ex.build_detector(store, tmp_path_factory.mktemp(name), name)
        for name in ("fast-rcnn", "maskrcnn")
    }


@pytest.mark.parametrize("example", ["fcn", "deeplabv3"])
def test_segmenters_load_their_neighbour_files_and_answer_per_pixel_lists(
    segmenters: dict[str, Path], example: str, tmp_path: Path, ts_api: str
) -> None:
    found, handler = served(segmenters[example], tmp_path / "x")
    assert found.model["handler"] == "torchserve:ts.torch_handler.image_segmenter"
    answer = handler.predict(ex.photo(), "image/jpeg")
    # TorchServe's answer: [height][width][class, probability] over the 224x224 crop.
    assert len(answer) == 224 and len(answer[0]) == 224 and len(answer[0][0]) == 2
    assert all(0 <= cls < 21 and 0 < p <= 1 for row in answer[::37] for cls, p in row[::37])


@needs_torchserve
@pytest.mark.parametrize("example", ["fcn", "deeplabv3"])
def test_segmenters_answer_as_torchserves_handler(
    segmenters: dict[str, Path], example: str, tmp_path: Path, ts_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [ex.photo(seed=1), ex.photo(300, 300, seed=2)]
    _, handler = served(segmenters[example], tmp_path / "x")
    ours = [handler.predict(image, "image/jpeg") for image in images]
    theirs = reference(
        tmp_path / "x",
        "ts.torch_handler.image_segmenter.ImageSegmenter",
        [{"body": i} for i in images],
        monkeypatch,
    )
    assert ours == theirs


@needs_torchserve
@pytest.mark.parametrize("example", ["fast-rcnn", "maskrcnn"])
def test_detectors_answer_torchserves_exact_boxes(
    detectors: dict[str, Path], example: str, tmp_path: Path, ts_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [ex.photo(seed=3), ex.photo(280, 200, seed=4)]
    found, handler = served(detectors[example], tmp_path / "x")
    assert found.model["handler"] == "torchserve:ts.torch_handler.object_detector"
    ours = [handler.predict(image, "image/jpeg") for image in images]
    # Differently sized images still share a batch here (each runs alone), one answer each.
    assert handler.predict_batch([handler.preprocess(image, "image/jpeg") for image in images]) == ours
    theirs = reference(
        tmp_path / "x",
        "ts.torch_handler.object_detector.ObjectDetector",
        [{"body": i} for i in images],
        monkeypatch,
    )
    assert ours == theirs
    boxes = [box for found in ours for item in found for box in item.get("person", [])]
    assert ours[0] and all(set(item) == {"person", "score"} for item in ours[0])
    assert any(round(c, 2) != c for c in boxes)  # not rounded, as TorchServe answers them


@pytest.fixture(scope="module")
def text_archive(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _forget_ts()
    from handlers.torchserve import ts_api

    ts_api.install()  # the vocabulary is cleaned with whichever ts this process has
    vocab = ex.text_vocab([ex.SAMPLE_TEXT, ex.TRICKY_TEXT])
    _forget_ts()
    return ex.build_text_classifier(store, tmp_path_factory.mktemp("text"), vocab)


def test_text_classifier_reads_source_vocab_and_answers_every_class(
    text_archive: Path, tmp_path: Path, ts_api: str
) -> None:
    found, handler = served(text_archive, tmp_path / "x")
    assert found.model["handler"] == "torchserve:ts.torch_handler.text_classifier"
    answers = handler.predict_batch(
        [handler.preprocess(text.encode(), "text/plain") for text in (ex.SAMPLE_TEXT, ex.TRICKY_TEXT)]
    )
    assert [list(a) for a in answers] == [ex.NEWS, ex.NEWS]
    assert all(abs(sum(a.values()) - 1) < 1e-5 for a in answers) and answers[0] != answers[1]
    # A word the vocabulary lacks fails that request alone (TorchServe fails it with a 503).
    with pytest.raises(BadInputError, match="KeyError"):
        handler.preprocess(b"zebra", "text/plain")


@needs_torchserve
def test_text_classifier_answers_as_torchserves_handler(
    text_archive: Path, tmp_path: Path, ts_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [ex.SAMPLE_TEXT.encode(), ex.TRICKY_TEXT.encode()]
    _, handler = served(text_archive, tmp_path / "x")
    ours = [handler.predict(text, "text/plain") for text in texts]
    theirs = reference(
        tmp_path / "x",
        "ts.torch_handler.text_classifier.TextClassifier",
        [{"body": t} for t in texts],
        monkeypatch,
    )
    assert ours == theirs


def test_custom_metrics_are_collected_with_torchserves_dimensions(
    store: Path, tmp_path: Path, ts_api: str
) -> None:
    from tests.fixtures.torchserve_archives import digit_png

    archive = ex.build_custom_metrics(store, tmp_path / "w")
    _, handler = served(archive, tmp_path / "x")
    answer = handler.predict(digit_png(3), "image/png")
    assert isinstance(answer, int) and 0 <= answer <= 9
    records = {(r.name, r.kind): r for r in handler.metrics.drain()}
    assert records[("InitializeCallCount", "counter")].dimensions == (("Level", "Error"),)
    assert records[("InferenceRequestCount", "counter")].dimensions == ()
    assert records[("RequestBatchSize", "gauge")].dimensions == (("ModelName", "mnist_custom_metrics"),)
    assert records[("SizeOfImage", "gauge")].unit == "kB"
    assert records[("HandlerMethodTime", "gauge")].dimensions == (
        ("MethodName", "preprocess"),
        ("Level", "Error"),
    )
    assert records[("PostprocessCallCount", "counter")].value == 1
    assert records[("ExamplePercentMetric", "histogram")].value == 50
    assert handler.metrics.drain() == []  # taken once


def test_micro_batching_handler_answers_each_request_in_order(
    store: Path, tmp_path: Path, ts_api: str
) -> None:
    archive = ex.build_micro_batching(store, tmp_path / "w")
    _, handler = served(archive, tmp_path / "x")
    try:
        assert not handler.per_request  # its handle is MicroBatching's, given the whole batch
        assert handler.service.handle.micro_batch_size == 2
        assert handler.service.handle.parallelism == {"preprocess": 2, "inference": 1, "postprocess": 2}
        images = [ex.photo(seed=s) for s in range(5)]
        batch = handler.predict_batch([handler.preprocess(image, "image/jpeg") for image in images])
        alone = [handler.predict(image, "image/jpeg") for image in images]
        assert len(batch) == 5 and [list(a) for a in batch] == [list(a) for a in alone]
        assert all(len(a) == 5 for a in batch)
    finally:
        handler.service.handle.shutdown()  # TorchServe's step threads are not daemons
