"""One result per request, or an error that says the handler broke the contract."""

from __future__ import annotations

import pytest

from handlers.errors import InferenceError
from handlers.handler_catalog import create_handler
from tests.fixtures.specs import tiny_spec


def test_each_request_gets_its_own_answer(cat_png: bytes, coffee_png: bytes) -> None:
    handler = create_handler(tiny_spec())
    handler.load()
    items = [handler.preprocess(data) for data in (cat_png, coffee_png, cat_png)]
    results = handler.predict_batch(items)
    # In request order, and what each photo gets alone: batch-mates change nothing.
    assert results[0] != results[1]
    for result, item in zip(results, items, strict=True):
        (alone,) = handler.predict_batch([item])
        assert list(result) == list(alone)
        assert list(result.values()) == pytest.approx(list(alone.values()), abs=1e-5)


def test_empty_batch() -> None:
    handler = create_handler(tiny_spec())
    handler.load()
    assert handler.predict_batch([]) == []


def test_wrong_result_count_is_an_error(cat_png: bytes) -> None:
    handler = create_handler(tiny_spec(handler="tests.fixtures.handlers:WrongCountClassifier"))
    handler.load()
    with pytest.raises(InferenceError, match="returned 1 results for 2 requests"):
        handler.predict_batch([handler.preprocess(cat_png)] * 2)


def test_model_failure_becomes_inference_error(cat_png: bytes) -> None:
    handler = create_handler(tiny_spec())
    handler.load()
    with pytest.raises(InferenceError, match="failed on a batch of 1"):
        handler.predict_batch([handler.preprocess(cat_png)[:1]])  # one channel instead of three
