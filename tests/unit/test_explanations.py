"""Explanations at the handler level (no Ray): Integrated Gradients maps of the image
classifier, per-word attributions of the text classifier, TorchServe handler files'
``explain_handle``/``get_insights``, and the bounds on what a request may ask."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from handlers.errors import BadInputError, NotImplementedFeatureError
from handlers.explain import ExplainRequest, integrated_gradients, run_to_end
from handlers.handler_catalog import create_handler
from handlers.image_classifier import ImageClassifier
from handlers.spec import ModelSpec
from handlers.text_classifier import TextClassifier
from tests.fixtures import torchserve_archives as ts
from tests.fixtures.specs import echo_spec, tiny_spec
from tests.unit.test_torchserve_handlers import served, ts_api  # noqa: F401 - the ts_api fixture

LANGID = "pkg://py3langid/data/model.npz.xz"


@pytest.fixture(scope="module")
def tiny() -> ImageClassifier:
    handler = create_handler(tiny_spec(explain={"n_steps": 8, "max_steps": 40, "internal_batch_size": 3}))
    handler.load()
    assert isinstance(handler, ImageClassifier)
    return handler


@pytest.fixture(scope="module")
def language() -> TextClassifier:
    spec = ModelSpec.model_validate(
        {
            "name": "language",
            "handler": "text_classifier",
            "source": {"factory": "handlers.zoo:language_identifier", "factory_kwargs": {"model": LANGID}},
            "options": {"tokenizer": "byte_ngrams", "vocab": LANGID},
        }
    )
    handler = create_handler(spec)
    handler.load()
    assert isinstance(handler, TextClassifier)
    return handler


def test_image_map_has_the_models_input_resolution(tiny: ImageClassifier, cat_png: bytes) -> None:
    item = tiny.explain_input(cat_png, "image/png")
    attributions = run_to_end(tiny.explain(item, ExplainRequest()))
    tensor = torch.tensor(attributions)
    assert tensor.shape == (3, 56, 56)  # tiny_spec crops to 56: TorchServe's [C][H][W] lists
    assert tensor.abs().sum() > 0


def test_image_explanation_yields_between_chunks(tiny: ImageClassifier, cat_png: bytes) -> None:
    item = tiny.explain_input(cat_png, "image/png")
    steps = tiny.explain(item, ExplainRequest(n_steps=10))  # chunks of 3: 3 + 3 + 3 + 1
    pauses = 0
    with pytest.raises(StopIteration):
        while True:
            next(steps)
            pauses += 1
    assert pauses == 3


def test_chunked_integrated_gradients_keep_completeness(tiny: ImageClassifier, cat_png: bytes) -> None:
    # IG's attributions sum to f(input) - f(baseline); splitting the path into segments must
    # keep that (each segment integrates its own part of the path).
    assert tiny.model is not None
    inputs = tiny.collate([tiny.preprocess(cat_png, "image/png")])
    target = 2
    total = run_to_end(integrated_gradients(tiny.model, inputs, target, n_steps=64, chunk=5))
    with torch.no_grad():
        gap = tiny.model(inputs)[0, target] - tiny.model(torch.zeros_like(inputs))[0, target]
    assert float(total.sum()) == pytest.approx(float(gap), rel=0.05, abs=1e-3)


def test_target_by_index_or_label_changes_the_map(tiny: ImageClassifier, cat_png: bytes) -> None:
    item = tiny.explain_input(cat_png, "image/png")
    by_index = run_to_end(tiny.explain(item, ExplainRequest(target="4", n_steps=4)))
    by_label = run_to_end(tiny.explain(item, ExplainRequest(target=tiny.label(4), n_steps=4)))
    other = run_to_end(tiny.explain(item, ExplainRequest(target="5", n_steps=4)))
    assert by_index == by_label != other


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (ExplainRequest(n_steps=41), "n_steps must be between 1 and 40"),
        (ExplainRequest(target="10"), "target 10 is not a class"),
        (ExplainRequest(target="zebra"), "neither a class index nor a label"),
    ],
)
def test_bad_explanation_requests_are_400(
    tiny: ImageClassifier, cat_png: bytes, request_: ExplainRequest, message: str
) -> None:
    item = tiny.explain_input(cat_png, "image/png")
    with pytest.raises(BadInputError, match=message):
        run_to_end(tiny.explain(item, request_))


def test_heat_map_is_a_png_at_input_resolution(tiny: ImageClassifier, cat_png: bytes) -> None:
    item = tiny.explain_input(cat_png, "image/png")
    png = run_to_end(tiny.explain(item, ExplainRequest(n_steps=4, heatmap=True)))
    image = Image.open(io.BytesIO(png))
    assert (image.format, image.size, image.mode) == ("PNG", (56, 56), "RGB")


def test_text_attributions_are_per_word(language: TextClassifier) -> None:
    text = "The cat is on the table, c'est la vie."
    item = language.explain_input(text.encode(), "text/plain")
    answer = run_to_end(language.explain(item, ExplainRequest(target="fr")))
    assert answer["words"] == text.split()
    assert len(answer["importances"]) == len(answer["words"]) and answer["target"] == "fr"
    ranked = sorted(zip(answer["importances"], answer["words"], strict=True), reverse=True)
    assert ranked[0][1] == "c'est"  # the French words are what makes it French
    assert {w for _, w in ranked[:3]} == {"c'est", "la", "vie."}


def test_text_explanation_defaults_to_the_top_class_and_refuses_a_heat_map(language: TextClassifier) -> None:
    item = language.explain_input(b"Dies ist ein deutscher Satz.", "text/plain")
    assert run_to_end(language.explain(item, ExplainRequest()))["target"] == "de"
    with pytest.raises(BadInputError, match="heat map"):
        run_to_end(language.explain(item, ExplainRequest(heatmap=True)))


def test_a_handler_without_explanations_is_501_before_decoding() -> None:
    handler = create_handler(echo_spec())
    with pytest.raises(NotImplementedFeatureError, match="has no explanations"):
        handler.explain_input(b"not even a tensor request", None)


def test_explain_settings_bound_the_default() -> None:
    with pytest.raises(ValueError, match="must not exceed max_steps"):
        tiny_spec(explain={"n_steps": 300, "max_steps": 200})


def test_torchserve_handler_file_explains_with_get_insights(
    tmp_path: Path,
    ts_api: str,  # noqa: F811 - the fixture
) -> None:
    archive = ts.build_mnist(tmp_path, tmp_path / "build")
    _, handler = served(archive, tmp_path)
    digit = io.BytesIO()
    Image.new("L", (28, 28), 255).save(digit, format="PNG")
    item = handler.explain_input(digit.getvalue(), "image/png")
    attributions = handler.explain(item, ExplainRequest(target="3"))
    assert torch.tensor(attributions).shape == (1, 28, 28)  # MNIST: one channel, 28x28
    png = handler.explain(item, ExplainRequest(heatmap=True))
    assert Image.open(io.BytesIO(png)).size == (28, 28)


def test_torchserve_handler_without_get_insights_is_501(tmp_path: Path, ts_api: str) -> None:  # noqa: F811
    (tmp_path / "plain.py").write_text(
        "from ts.torch_handler.base_handler import BaseHandler\n"
        "class Plain(BaseHandler):\n"
        "    def initialize(self, context):\n"
        "        self.initialized = True\n"
        "    def preprocess(self, data):\n"
        "        return [1.0]\n"
    )
    spec = ModelSpec.model_validate(
        {"name": "plain", "handler": "torchserve:plain.py", "base_dir": str(tmp_path)}
    )
    handler = create_handler(spec)
    handler.load()
    with pytest.raises(NotImplementedFeatureError, match="no explanations"):
        handler.explain(handler.explain_input(b"1", "text/plain"), ExplainRequest())


def test_a_handle_function_sees_torchserves_explain_header(tmp_path: Path, ts_api: str) -> None:  # noqa: F811
    (tmp_path / "entry.py").write_text(
        "def handle(data, context):\n"
        "    if data is None:\n"
        "        return None\n"
        "    explain = context.get_request_header(0, 'explain') == 'True'\n"
        "    return [{'explained': explain, 'target': data[0].get('target')}]\n"
    )
    spec = {"name": "entry", "handler": "torchserve:entry.py", "base_dir": str(tmp_path)}
    handler = create_handler(ModelSpec.model_validate(spec))
    handler.load()
    item = handler.explain_input(b"x", "text/plain")
    assert handler.explain(item, ExplainRequest(target="7")) == {"explained": True, "target": 7}
    assert handler.predict(b"x", "text/plain") == {"explained": False, "target": None}
