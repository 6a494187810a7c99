"""Workflow specifications: TorchServe's YAML (inside a .war) and our own workflow args."""

from __future__ import annotations

import pytest

from deployments.common.workflow_spec import WorkflowArgs, check_dag, parents_of, parse_torchserve_spec
from handlers.errors import BadInputError

# TorchServe's examples/Workflows/dog_breed_classification spec, as it ships.
DOG_BREED = """
models:
    min-workers: 1
    max-workers: 1
    batch-size: 4
    max-batch-delay: 100
    retry-attempts: 5
    timeout-ms: 300000

    cat_dog_classification:
      url: cat_dog_classification.mar

    dog_breed_classification:
      url: dog_breed_classification.mar

dag:
  pre_processing: [cat_dog_classification, dog_breed_classification]
  cat_dog_classification: [dog_breed_classification]
"""


def test_torchserve_spec_globals_apply_to_each_model_and_overrides_win() -> None:
    spec = parse_torchserve_spec(
        DOG_BREED.replace(
            "url: dog_breed_classification.mar", "url: dog_breed_classification.mar\n      batch-size: 2"
        )
    )
    cat, dog = spec.models["cat_dog_classification"], spec.models["dog_breed_classification"]
    assert (cat.batch_size, cat.max_batch_delay, cat.retry_attempts, cat.timeout_ms) == (4, 100, 5, 300000)
    assert dog.batch_size == 2 and dog.url == "dog_breed_classification.mar"
    assert spec.function_nodes() == ["pre_processing"]
    assert parents_of(spec.dag)["dog_breed_classification"] == ["pre_processing", "cat_dog_classification"]


def test_torchserve_defaults_when_the_spec_sets_none() -> None:
    spec = parse_torchserve_spec("models:\n  m1:\n    url: m1.mar\ndag:\n  m1: [post]\n")
    m1 = spec.models["m1"]
    # TorchServe's documented defaults (its WorkFlow.java).
    assert (m1.min_workers, m1.max_workers, m1.batch_size, m1.max_batch_delay) == (1, 1, 1, 50)
    assert (m1.retry_attempts, m1.timeout_ms) == (1, 10000)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("models: {}\ndag:\n  a: [b]\n  c: [b]\n", "exactly one start node"),
        ("models: {}\ndag:\n  a: [b]\n  b: [c]\n  c: [b]\n", "cycle through b, c"),
        ("models: {}\ndag:\n  a: [a]\n", "feeds itself"),
        ("models:\n  m1:\n    url: m1.mar\n    batch-sise: 4\ndag:\n  m1: []\n", "unknown key 'batch-sise'"),
        ("models:\n  batch-size: zero\n  m1:\n    url: x.mar\ndag:\n  m1: []\n", "batch_size"),
        ("models:\n  m1: m1.mar\ndag:\n  m1: []\n", "models.m1 must be a model"),
        ("dag:\n  a: [b]\n", "'models:' mapping"),
        ("models: {}\ndag:\n  a: b\n", "dag.a must be a list"),
        ("models: [\n", "not YAML"),
    ],
)
def test_bad_specs_are_400s_that_say_what_is_wrong(text: str, words: str) -> None:
    with pytest.raises(BadInputError) as caught:
        parse_torchserve_spec(text)
    assert words in caught.value.message


def test_check_dag_orders_parents_first() -> None:
    order = check_dag({"pre": ["m1", "m2"], "m1": ["agg"], "m2": ["agg"]})
    assert order[0] == "pre" and order[-1] == "agg" and set(order[1:3]) == {"m1", "m2"}


def test_workflow_args_from_our_config() -> None:
    args = WorkflowArgs.model_validate(
        {
            "name": "pipeline",
            "handler": "examples/workflows/text_pipeline.py",
            "models": {"classify": "text_classifier", "again": {"model": "m", "version": "2.0"}},
            "dag": {"prepare": ["classify", "again"], "classify": ["merge"], "again": ["merge"]},
        }
    )
    assert args.model_node("classify").model == "text_classifier"
    assert args.model_node("again").version == "2.0"
    assert args.function_nodes() == ["prepare", "merge"]


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"name": "w", "dag": {"a": ["b"]}}, "name the file that defines them in 'handler'"),
        (
            {"name": "w", "models": {"x": "m"}, "dag": {"a": ["b"]}, "handler": "h.py"},
            "models not in the dag: x",
        ),
        ({"name": "w", "dag": {"a": ["b"]}, "handler": "h.py", "retries": 2}, "Extra inputs"),
        ({"name": "w", "dag": {"a": ["b"], "c": ["b"]}, "handler": "h.py"}, "exactly one start node"),
    ],
)
def test_workflow_args_refuse_mistakes(raw: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        WorkflowArgs.model_validate(raw)
