"""The `tensor` default handler: declared inputs checked per request, rows batched along
dimension 0 and split back, every datatype bit for bit; no Ray."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from handlers.errors import BadInputError, ConfigError, InferenceError
from handlers.handler_catalog import create_handler
from handlers.options import validate_options
from handlers.spec import ModelSpec
from handlers.tensor import TensorHandler
from handlers.tensor_data import Tensor, TensorRequest
from handlers.tensor_json import bf16_bits, bf16_values, json_to_array
from tests.fixtures.specs import (
    TENSOR_DATATYPES,
    echo_spec,
    expected_scores,
    sample_array,
    scorer_spec,
    tiny_spec,
)


@pytest.fixture(scope="module")
def scorer() -> TensorHandler:
    handler = create_handler(scorer_spec())
    handler.load()
    return handler  # type: ignore[return-value]


@pytest.fixture(scope="module")
def echo() -> TensorHandler:
    handler = create_handler(echo_spec())
    handler.load()
    return handler  # type: ignore[return-value]


def raw(name: str, array: np.ndarray, datatype: str) -> Tensor:
    data = array.view(np.uint16).tobytes() if datatype == "BF16" else array.tobytes()
    return Tensor(name, datatype, tuple(array.shape), data)


def features(rows: list[list[float]]) -> TensorRequest:
    return TensorRequest((raw("features", np.array(rows, np.float32), "FP32"),))


def test_every_datatype_survives_bit_for_bit(echo: TensorHandler) -> None:
    arrays = {d: sample_array(d) for d in TENSOR_DATATYPES}
    request = TensorRequest(tuple(raw(f"in_{d.lower()}", a, d) for d, a in arrays.items()))
    (outputs,) = echo.predict_batch([echo.preprocess_tensors(request)])
    for tensor, (datatype, sent) in zip(outputs, arrays.items(), strict=True):
        assert (
            tensor.name == f"out_{datatype.lower()}"
            and tensor.datatype == datatype
            and tensor.shape == (2, 3)
        )
        assert tensor.data == raw("x", sent, datatype).data, datatype


def test_requests_are_batched_along_rows_and_split_back(scorer: TensorHandler) -> None:
    first, second = [[1, 2, 3, 4]], [[0, 0, 0, 1], [1, 1, 1, 1], [2, 0, 0, 0]]
    items = [scorer.preprocess_tensors(features(first)), scorer.preprocess_tensors(features(second))]
    answers = scorer.predict_batch(items)
    for answer, rows in zip(answers, (first, second), strict=True):
        (scores,) = answer
        assert scores.shape == (len(rows), 2)
        assert np.frombuffer(scores.data, np.float32).reshape(-1, 2).tolist() == expected_scores(rows)


def test_variable_dimensions_that_differ_run_as_separate_groups() -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "seq", "handler": "tensor", "source": {"factory": "tests.fixtures.models:echo_tensors"},
            "options": {"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, -1]}],
                        "outputs": [{"name": "y", "datatype": "INT64", "shape": [-1, -1]}]},
        }
    )  # fmt: skip
    handler = create_handler(spec)
    handler.load()
    short, long = np.arange(2).reshape(1, 2), np.arange(5).reshape(1, 5)
    items = [handler.preprocess_tensors(TensorRequest((raw("x", a, "INT64"),))) for a in (short, long, short)]
    answers = handler.predict_batch(items)
    assert [a[0].shape for a in answers] == [(1, 2), (1, 5), (1, 2)]


@pytest.mark.parametrize(
    ("request_inputs", "fragment"),
    [
        (
            (raw("features", np.zeros((2, 3), np.float32), "FP32"),),
            "shape [2, 3] does not fit the model's [-1, 4]",
        ),
        ((raw("features", np.zeros((2, 4), np.float64), "FP64"),), "datatype FP64, but the model takes FP32"),
        ((raw("other", np.zeros((2, 4), np.float32), "FP32"),), "missing features"),
        ((), "missing features"),
        ((raw("features", np.zeros((0, 4), np.float32), "FP32"),), "no rows"),
        ((Tensor("features", "FP32", (1, 4), b"\0" * 15),), "15 bytes"),
    ],
)
def test_bad_tensors_are_refused_before_batching(
    scorer: TensorHandler, request_inputs: tuple, fragment: str
) -> None:
    with pytest.raises(BadInputError, match=None) as caught:
        scorer.preprocess_tensors(TensorRequest(request_inputs))
    assert fragment in caught.value.message


def test_json_and_npy_bodies_for_predictions(scorer: TensorHandler) -> None:
    rows = [[1, 2, 3, 4], [0, 0, 0, 1]]
    assert scorer.predict(json.dumps(rows).encode()) == {"scores": expected_scores(rows)}
    assert scorer.predict(json.dumps({"features": rows}).encode(), "application/json") == {
        "scores": expected_scores(rows)
    }
    # One row without its batch dimension answers without it.
    assert scorer.predict(b"[1, 2, 3, 4]") == {"scores": expected_scores(rows[:1])[0]}
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, np.float32))
    assert scorer.predict(buffer.getvalue()) == {"scores": expected_scores(rows)}
    buffer = io.BytesIO()
    np.save(buffer, np.array(rows, np.int64))
    with pytest.raises(BadInputError, match="npy dtype int64"):
        scorer.predict(buffer.getvalue())
    for bad, fragment in (
        (b"\x89PNG", "takes tensors"),
        (b"[[1, 2], [3]]", "ragged"),
        (b'{"features": "x"}', "numbers"),
    ):
        with pytest.raises(BadInputError, match=fragment):
            scorer.predict(bad)


def test_a_model_returning_other_outputs_than_declared_fails_the_batch() -> None:
    outputs = [{"name": name, "datatype": "FP32", "shape": [-1, 2]} for name in ("a", "b")]
    spec = scorer_spec().model_copy(update={"options": {**scorer_spec().options, "outputs": outputs}})
    handler = create_handler(spec)
    handler.load()
    with pytest.raises(InferenceError, match="returned 1 outputs; its options declare 2"):
        handler.predict_batch([handler.preprocess_tensors(features([[1, 2, 3, 4]]))])


def test_options_are_validated_without_torch() -> None:
    good = scorer_spec().options
    validate_options("tensor", good)
    for bad, fragment in (
        ({**good, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}]}, "batch"),
        ({**good, "inputs": [{"name": "x", "datatype": "UINT32", "shape": [-1]}]}, "datatype"),
        ({**good, "outputs": [{"name": "s", "datatype": "FP32", "shape": [-1]}] * 2}, "unique"),
        ({"inputs": good["inputs"]}, "outputs"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            validate_options("tensor", bad)


def test_media_handlers_refuse_numeric_tensors() -> None:
    handler = create_handler(tiny_spec())
    with pytest.raises(BadInputError, match="BYTES tensor"):
        handler.preprocess_tensors(features([[1, 2, 3, 4]]))
    assert handler.signature()["inputs"] == [{"name": "data", "datatype": "BYTES", "shape": [-1]}]


def test_bf16_rounds_to_nearest_even_and_json_refuses_what_does_not_fit() -> None:
    values = np.array([1.0, 1.00390625, 1.01171875, -2.5, np.inf], np.float32)
    assert bf16_values(bf16_bits(values)).tolist() == [1.0, 1.0, 1.015625, -2.5, np.inf]
    assert np.isnan(bf16_values(bf16_bits(np.array([np.nan], np.float32)))).all()
    for values, datatype, fragment in (
        ([1.5], "INT32", "integers"),
        ([256], "UINT8", "[0, 255]"),
        ([1], "BOOL", "true/false"),
        (["a"], "FP32", "numbers"),
        ([[1], [2, 3]], "FP32", "ragged"),
    ):
        with pytest.raises(BadInputError, match=fragment):
            json_to_array(values, datatype, "x")
