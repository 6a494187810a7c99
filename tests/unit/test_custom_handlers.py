"""Users' handlers: named by import path or by a .py file; a broken one is a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest

from handlers.errors import ConfigError
from handlers.handler_catalog import create_handler, handler_class
from tests.fixtures.specs import ROOT, tiny_spec

HANDLER_FILES = ROOT / "tests" / "fixtures" / "custom_handlers"


def test_handler_from_a_python_file_answers(cat_png: bytes) -> None:
    handler = create_handler(
        tiny_spec(handler=f"{HANDLER_FILES / 'shouting_classifier.py'}:ShoutingClassifier")
    )
    handler.load()
    result = handler.predict(cat_png)
    assert len(result) == 3 and all(label.startswith("LABEL-") for label in result)


def test_relative_file_paths_resolve_from_the_working_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    cls = handler_class("tests/fixtures/custom_handlers/shouting_classifier.py:ShoutingClassifier")
    assert cls.__name__ == "ShoutingClassifier"


def test_files_with_the_same_name_do_not_replace_each_other(tmp_path: Path) -> None:
    classes = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "handler.py").write_text(
            "from handlers.image_classifier import ImageClassifier\n\n\n"
            f"class Mine(ImageClassifier):\n    origin = {folder!r}\n"
        )
        classes.append(handler_class(f"{tmp_path / folder / 'handler.py'}:Mine"))
    assert [c.origin for c in classes] == ["a", "b"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (f"{HANDLER_FILES / 'broken_handler.py'}:Anything", "fails on purpose"),
        (f"{HANDLER_FILES / 'shouting_classifier.py'}:NotAHandler", "BaseHandler"),
        (f"{HANDLER_FILES / 'shouting_classifier.py'}:Missing", "no attribute 'Missing'"),
        (f"{HANDLER_FILES / 'no_such_file.py'}:Handler", "not found"),
        ("tests.fixtures.no_such_module:Handler", "cannot be imported"),
    ],
)
def test_unusable_handlers_are_config_errors(handler: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        handler_class(handler)
