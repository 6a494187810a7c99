"""py3langid's model as a torch module behind text_classifier: the same answers as py3langid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.text_classifier import TextClassifier

MODEL = "pkg://py3langid/data/model.npz.xz"
TEXTS = [
    "This is an English sentence about the weather today.",
    "Ceci est une phrase en français sur le temps qu'il fait.",
    "Dies ist ein deutscher Satz über das Wetter heute.",
    "Србија је земља у југоисточној Европи.",  # 'sr' has two columns (two scripts)
    "Это русский текст.",
    "こんにちは世界",
    "HELLO WORLD",  # all capitals: lowercased first, as py3langid does
]


@pytest.fixture(scope="module")
def identifier() -> TextClassifier:
    spec = ModelSpec.model_validate(
        {
            "name": "language",
            "handler": "text_classifier",
            "source": {"factory": "handlers.zoo:language_identifier", "factory_kwargs": {"model": MODEL}},
            "top_k": 3,
            "options": {"tokenizer": "byte_ngrams", "vocab": MODEL, "max_length": 4096},
        }
    )
    handler = create_handler(spec)
    handler.load()
    assert isinstance(handler, TextClassifier)
    return handler


@pytest.fixture(scope="module")
def py3langid():  # type: ignore[no-untyped-def]
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def test_same_top_languages_and_probabilities_as_py3langid(identifier: TextClassifier, py3langid) -> None:  # type: ignore[no-untyped-def]
    answers = identifier.predict_batch([identifier.preprocess(t.encode(), "text/plain") for t in TEXTS])
    for text, answer in zip(TEXTS, answers, strict=True):
        expected = py3langid.rank(text)[:3]
        assert list(answer) == [code for code, _ in expected], text
        assert list(answer.values()) == pytest.approx([p for _, p in expected], abs=2e-6), text


@given(text=st.text(min_size=1, max_size=200).filter(str.strip))
@settings(max_examples=60, deadline=None)
def test_any_text_gets_py3langids_top_language(identifier: TextClassifier, py3langid, text: str) -> None:  # type: ignore[no-untyped-def]
    answer = identifier.predict(text.encode(), "text/plain")
    ranking = dict(py3langid.rank(text))
    ours, probability = next(iter(answer.items()))
    # Our top language is one of py3langid's best (texts without a known n-gram tie).
    assert probability == pytest.approx(max(ranking.values()), abs=1e-5)
    assert ranking[ours] == pytest.approx(probability, abs=1e-5)


def test_one_token_per_byte(identifier: TextClassifier) -> None:
    tokens = identifier.preprocess("Grüße".encode(), "text/plain")
    assert len(tokens) == len("Grüße".encode()) == 7 and int(tokens.min()) > 0  # 0 is padding


def test_a_text_answers_the_same_in_any_batch(identifier: TextClassifier) -> None:
    items = [identifier.preprocess(t.encode(), "text/plain") for t in TEXTS]
    batch = identifier.predict_batch(items)
    for item, answer in zip(items, batch, strict=True):
        (alone,) = identifier.predict_batch([item])
        assert list(alone) == list(answer)
        assert list(alone.values()) == pytest.approx(list(answer.values()), abs=1e-6)


def test_labels_are_the_models_distinct_language_codes(identifier: TextClassifier) -> None:
    assert identifier.labels is not None
    assert len(identifier.labels) == len(set(identifier.labels)) == 140
