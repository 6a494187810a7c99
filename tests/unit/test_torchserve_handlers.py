"""TorchServe handler files and handler names, served in-process (no Ray).

The archives are made by the real torch-model-archiver (tests/fixtures/torchserve_archives.py):
TorchServe's MNIST shape (a grayscale 28x28 network behind its own ``ts.torch_handler``
subclass), and its "noop" test handlers in their three entry-point forms. Each handler test
runs on raytorch's ``ts`` API and, where TorchServe is installed, on TorchServe's own.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from handlers.archive import extract, read_extracted
from handlers.errors import BadInputError, ConfigError, HandlerStatusError, ModelLoadError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.torchserve.names import (
    TS_API_ENV,
    check_handler_file,
    default_handler_alias,
    mar_handler,
    real_ts_installed,
)
from handlers.torchserve.ts_api.util import load_label_mapping, map_class_to_label
from tests.fixtures import torchserve_archives as ts


@pytest.fixture(params=["raytorch", "torchserve"])
def ts_api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which ``ts`` the handler files import: ours, or TorchServe's own when it is installed."""
    if request.param == "torchserve" and not real_ts_installed():
        pytest.skip("TorchServe is not installed here (pip install torchserve captum)")
    for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv(TS_API_ENV, request.param)
    return request.param


def served(archive: Path, tmp_path: Path, **spec: object):
    """Extract ``archive`` as the management part does and load its handler as a replica does."""
    found = read_extracted(extract(archive, tmp_path / f"x-{archive.stem}"))
    handler = create_handler(ModelSpec.model_validate({**found.model, **spec}))
    handler.load()
    return found, handler


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("store")


@pytest.fixture(scope="module")
def mnist(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ts.build_mnist(store, tmp_path_factory.mktemp("mnist"))


def test_mnist_handler_file_answers_the_digit(mnist: Path, tmp_path: Path, ts_api: str) -> None:
    found, handler = served(mnist, tmp_path)
    assert found.model["handler"] == "torchserve:mnist_handler.py" and "source" not in found.model
    assert handler.per_request and handler.api == ts_api
    images = [ts.digit_png(d) for d in range(4)]
    answers = handler.predict_batch([handler.preprocess(image, "image/png") for image in images])
    # The same answers as the archive's own network over the handler's own transform.
    network = handler.service.model
    expected = [
        int(network(handler.service.image_processing(Image.open(io.BytesIO(image))).unsqueeze(0)).argmax())
        for image in images
    ]
    assert answers == expected and all(isinstance(a, int) and 0 <= a <= 9 for a in answers)


def test_a_bad_image_is_refused_alone_before_batching(mnist: Path, tmp_path: Path, ts_api: str) -> None:
    _, handler = served(mnist, tmp_path)
    with pytest.raises(BadInputError, match="preprocess refused this input"):
        handler.preprocess(b"not an image", "image/png")
    # A request already preprocessed still gets its answer in a batch of its own.
    assert len(handler.predict_batch([handler.preprocess(ts.digit_png(1))])) == 1


def test_base64_text_input_as_torchserve_reads_it(mnist: Path, tmp_path: Path, ts_api: str) -> None:
    import base64

    _, handler = served(mnist, tmp_path)
    image = ts.digit_png(7)
    as_text = handler.predict(base64.b64encode(image), "text/plain; charset=utf-8")
    assert as_text == handler.predict(image, "image/png")


@pytest.mark.parametrize(
    ("source", "handler_name"),
    [(ts.NOOP_CLASS, "noop_service.py"), (ts.NOOP_FUNCTION, "noop_entry:handle")],
)
def test_noop_entry_points(store: Path, tmp_path: Path, source: str, handler_name: str, ts_api: str) -> None:
    name = handler_name.split(".")[0].split(":")[0]
    archive = ts.build_handler_only(store, tmp_path / "work", name, "1.11", source, handler_name)
    found, handler = served(archive, tmp_path)
    assert found.model["version"] == "1.11" and found.model["handler"].startswith("torchserve:")
    assert not handler.per_request  # its own handle() takes the whole batch, as on TorchServe
    items = [handler.preprocess(b"data=test", "application/x-www-form-urlencoded") for _ in range(3)]
    assert handler.predict_batch(items) == ["OK", "OK", "OK"]


def test_customized_metadata_is_the_handlers_own(store: Path, tmp_path: Path, ts_api: str) -> None:
    archive = ts.build_handler_only(store, tmp_path / "w", "custom", "1.0", ts.NOOP_CUSTOMIZED, "custom.py")
    _, handler = served(archive, tmp_path)
    assert handler.describe() == {"data1": "1", "data2": "2"}


def test_a_handler_that_cannot_start_fails_the_load_with_its_reason(
    store: Path, tmp_path: Path, ts_api: str
) -> None:
    archive = ts.build_handler_only(store, tmp_path / "w", "broken", "1.0", ts.INIT_ERROR, "broken.py")
    found = read_extracted(extract(archive, tmp_path / "x"))
    handler = create_handler(ModelSpec.model_validate(found.model))
    with pytest.raises(ModelLoadError, match="failed to initialize: RuntimeError: this model cannot start"):
        handler.load()


def test_prediction_exception_answers_with_the_handlers_status(
    store: Path, tmp_path: Path, ts_api: str
) -> None:
    source = (
        "from ts.utils.util import PredictionException\n\n\n"
        "class Picky:\n"
        "    def initialize(self, context):\n"
        "        pass\n\n"
        "    def handle(self, data, context):\n"
        "        raise PredictionException('no such thing', 404)\n"
    )
    archive = ts.build_handler_only(store, tmp_path / "w", "picky", "1.0", source, "picky.py")
    _, handler = served(archive, tmp_path)
    with pytest.raises(HandlerStatusError) as info:
        handler.predict(b"x")
    assert (info.value.status, info.value.message) == (404, "no such thing")


def test_torchserve_names_of_default_handlers_mean_ours() -> None:
    for name in (
        "ts.torch_handler.image_classifier",
        "serve/ts/torch_handler/image_classifier.py:handle",
        "ts/torch_handler/image_classifier.py",
        "image_classifier:handle",
    ):
        assert default_handler_alias(name) == "image_classifier", name
        spec = {"name": "m", "handler": name, "source": {"architecture": "resnet18"}}
        assert ModelSpec.model_validate(spec).handler == "image_classifier"
    assert default_handler_alias("pkg.module:MyHandler") is None
    assert default_handler_alias("my_handler.py:MyHandler") is None


def test_mar_handler_rules(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text("class H:\n    pass\n")
    assert mar_handler("mine.py", tmp_path) == "torchserve:mine.py"
    # The archiver copies a handler to the archive's root: only its base name counts.
    assert mar_handler("examples/x/mine.py", tmp_path) == "torchserve:mine.py"
    assert mar_handler("mine:handle", tmp_path) == "torchserve:mine.py:handle"
    # A .mar's segmenter, detector and text classifier are TorchServe's classes; its image
    # classifier is ours (it answers alike).
    assert mar_handler("object_detector", tmp_path) == "torchserve:ts.torch_handler.object_detector"
    assert (
        mar_handler("ts.torch_handler.text_classifier", tmp_path)
        == "torchserve:ts.torch_handler.text_classifier"
    )
    assert mar_handler("image_segmenter:handle", tmp_path) == "torchserve:ts.torch_handler.image_segmenter"
    assert mar_handler("image_classifier", tmp_path) == "image_classifier"
    with pytest.raises(ConfigError, match="neither a file in the archive"):
        mar_handler("invalidHandler", tmp_path)


def test_handler_files_are_checked_without_running_them(tmp_path: Path, ts_api: str) -> None:
    (tmp_path / "ok.py").write_text(
        "from ts.torch_handler.image_classifier import ImageClassifier\nclass A(ImageClassifier): pass\n"
    )
    check_handler_file("torchserve:ok.py", str(tmp_path))
    (tmp_path / "two.py").write_text("class A: pass\nclass B: pass\n")
    with pytest.raises(ConfigError, match="must define one class"):
        check_handler_file("torchserve:two.py", str(tmp_path))
    (tmp_path / "llm.py").write_text("from ts.torch_handler.vllm_handler import VLLMHandler\nclass A: pass\n")
    if ts_api == "raytorch":  # a module ours does not provide: TorchServe's own is needed
        with pytest.raises(ConfigError, match="pip install torchserve"):
            check_handler_file("torchserve:llm.py", str(tmp_path))
    else:
        check_handler_file("torchserve:llm.py", str(tmp_path))
    (tmp_path / "bad.py").write_text("class A(:\n")
    with pytest.raises(ConfigError, match="not valid Python"):
        check_handler_file("torchserve:bad.py", str(tmp_path))
    with pytest.raises(ConfigError, match="not in the archive"):
        check_handler_file("torchserve:../ok.py", str(tmp_path))


def test_label_mapping_and_class_labels(tmp_path: Path) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_text('{"0": ["n01", "tench"], "1": "goldfish"}')
    mapping = load_label_mapping(str(path))
    assert mapping == {"0": "tench", "1": "goldfish"}
    assert map_class_to_label([[0.7, 0.3]], mapping, [[0, 1]]) == [{"tench": 0.7, "goldfish": 0.3}]
    assert map_class_to_label([[0.5]], None, [[3]]) == [{"3": 0.5}]
    assert load_label_mapping(str(tmp_path / "absent.json")) is None
