"""The text_classifier handler: request parsing, the vocabulary, padding-independent batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.errors import (
    BadInputError,
    ConfigError,
    ModelLoadError,
    PayloadTooLargeError,
    RaytorchError,
    UnsupportedMediaTypeError,
)
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.text_classifier import TextClassifier
from handlers.text_io import Vocabulary, read_text, read_vocabulary

TOKENS = ["<pad>", "<unk>", "good", "bad", "movie", "plot"]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(TOKENS) + "\n")
    return path


def text_spec(vocab: Path | str, **options: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "text",
            "handler": "text_classifier",
            "source": {
                "factory": "tests.fixtures.models:text_bag_classifier",
                "factory_kwargs": {"vocab_size": len(TOKENS), "num_classes": 4},
            },
            "top_k": 3,
            "options": {"vocab": str(vocab), **options},
        }
    )


@pytest.fixture(scope="module")
def classifier(vocab_file: Path) -> TextClassifier:
    torch.manual_seed(0)
    handler = create_handler(text_spec(vocab_file, max_length=8, max_chars=100))
    handler.load()
    assert isinstance(handler, TextClassifier)
    return handler


def test_top_k_probabilities_sorted(classifier: TextClassifier) -> None:
    result = classifier.predict(b"A good movie", "text/plain; charset=utf-8")
    assert len(result) == 3 and all(label.isdigit() for label in result)
    probabilities = list(result.values())
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0001


def test_texts_of_different_lengths_batch_like_singles(classifier: TextClassifier) -> None:
    bodies = [b"good", b"bad movie, bad plot, good cast", json.dumps({"text": "plot"}).encode()]
    types = ["text/plain", None, "application/json"]
    items = [classifier.preprocess(b, t) for b, t in zip(bodies, types, strict=True)]
    assert [len(item) for item in items] == [1, 6, 1]
    batch = classifier.predict_batch(items)
    for got, item in zip(batch, items, strict=True):
        alone = classifier.predict_batch([item])[0]
        assert list(got) == list(alone)
        assert list(got.values()) == pytest.approx(list(alone.values()), abs=1e-5)


def test_words_are_lowercased_looked_up_and_truncated(classifier: TextClassifier) -> None:
    assert classifier.preprocess(b"GOOD Movie!! xyzzy").tolist() == [2, 4, 1]
    assert len(classifier.preprocess(b"good " * 15)) == 8


def test_both_vocabulary_formats_agree(vocab_file: Path, tmp_path: Path) -> None:
    as_json = tmp_path / "vocab.json"
    as_json.write_text(json.dumps({token: i for i, token in enumerate(TOKENS)}))
    assert read_vocabulary(as_json) == read_vocabulary(vocab_file)


@pytest.mark.parametrize(
    ("ids", "message"),
    [({"<pad>": 0, "good": 1}, "<unk>"), ({"good": 0, "<unk>": 1}, "reserved")],
)
def test_unusable_vocabularies_fail_at_load(ids: dict[str, int], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        Vocabulary(ids)


def test_missing_vocabulary_file_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        create_handler(text_spec(tmp_path / "nope.txt")).load()


@pytest.mark.parametrize(
    ("body", "content_type", "error"),
    [
        (b"\xff\xfe bad utf-8", "text/plain", BadInputError),
        (b"   \n", None, BadInputError),
        (b"!!! ???", None, BadInputError),
        (b'{"txt": "good"}', "application/json", BadInputError),
        (b'["good"]', "application/json", BadInputError),
        (b'{"text": ', "application/json", BadInputError),
        (b'{"text": ""}', "application/json", BadInputError),
        (b"x" * 101, "text/plain", PayloadTooLargeError),
        (b"x" * 10_000, "text/plain", PayloadTooLargeError),
        (b"\x89PNG", "image/png", UnsupportedMediaTypeError),
        (b"good", "text/plain; charset=latin-1", UnsupportedMediaTypeError),
    ],
)
def test_bad_requests_get_the_right_error(
    classifier: TextClassifier, body: bytes, content_type: str | None, error: type
) -> None:
    with pytest.raises(error):
        classifier.preprocess(body, content_type)


def test_deeply_nested_json_is_a_400() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(BadInputError, match="nested too deeply"):
        read_text(deep, "application/json", 100_000)


def test_form_encoded_body_from_curl_d_is_plain_text() -> None:
    assert read_text(b"great film", "application/x-www-form-urlencoded", 100) == "great film"


TEXT_TYPES = [None, "text/plain", "application/octet-stream", "text/csv; charset=utf-8"]
OTHER_TYPES = ["application/json", "image/png", "text/csv; charset=x"]


def plain(text: str) -> bytes:
    return text.encode("utf-8")


@given(
    body=st.one_of(st.binary(max_size=300), st.text(max_size=60).map(plain)),
    content_type=st.sampled_from(TEXT_TYPES + OTHER_TYPES),
)
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_text_or_a_project_error(body: bytes, content_type: str | None) -> None:
    try:
        sent = body.decode("utf-8")
    except UnicodeDecodeError:
        sent = None
    # What must be accepted: UTF-8 text, not blank, within the limit, sent as text.
    usable = content_type in TEXT_TYPES and sent is not None and sent.strip() != "" and len(sent) <= 50
    try:
        text = read_text(body, content_type, max_chars=50)
    except RaytorchError as exc:
        assert not usable, f"usable text {sent!r} ({content_type}) was refused: {exc.message}"
        return
    # What reaches the model is the sender's text, unchanged, within the limit.
    assert text.strip() and len(text) <= 50
    if content_type != "application/json":
        assert text == sent


@given(text=st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_json_bodies_give_their_text_field(text: str) -> None:
    body = json.dumps({"text": text}).encode()
    try:
        assert read_text(body, "application/json", max_chars=50) == text
    except RaytorchError as exc:
        assert not text.strip() or len(text) > 50, f"{text!r} was refused: {exc.message}"


def test_options_are_validated(vocab_file: Path) -> None:
    with pytest.raises(ConfigError, match="max_len"):
        create_handler(text_spec(vocab_file, max_len=3))
    with pytest.raises(ConfigError, match="vocab"):
        create_handler(
            ModelSpec.model_validate(
                {
                    "name": "t",
                    "handler": "text_classifier",
                    "source": {"factory": "tests.fixtures.models:text_bag_classifier"},
                }
            )
        )
