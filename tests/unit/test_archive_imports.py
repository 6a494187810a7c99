"""Each archive's Python files are its own modules: two archives that both ship ``model.py``
with a ``Net`` loaded in one process (a pool replica) each run their own, and an archive
registered again at the same path with new code runs the new code."""

from __future__ import annotations

import importlib
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec

# A TorchServe handler file that imports its archive's model file by name, as TorchServe's
# examples do, and answers with what the archive's network says.
HANDLER = textwrap.dedent(
    """
    from model import Net
    import helpers.scale


    def handle(data, context):
        if data is None:
            return None
        return [helpers.scale.times(Net().answer()) for _ in data]
    """
)
HELPERS = "from model import Net\n\n\ndef times(value):\n    return value * Net.FACTOR\n"


def write_archive(folder: Path, answer: str, factor: int = 1) -> Path:
    """An extracted TorchServe-style archive: handler.py, model.py and a helpers package."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER)
    (folder / "model.py").write_text(
        f"class Net:\n    FACTOR = {factor}\n\n    def answer(self):\n        return {answer!r}\n"
    )
    (folder / "helpers").mkdir(exist_ok=True)
    (folder / "helpers" / "__init__.py").write_text("")
    (folder / "helpers" / "scale.py").write_text(HELPERS)
    return folder


def loaded(folder: Path, name: str = "m", version: str = "1.0"):
    spec = ModelSpec(name=name, version=version, handler="torchserve:handler.py", base_dir=str(folder))
    handler = create_handler(spec)
    handler.load()
    return handler


def test_two_archives_with_the_same_file_names_each_run_their_own(tmp_path: Path) -> None:
    first = loaded(write_archive(tmp_path / "a", "from a", 2), "a")
    second = loaded(write_archive(tmp_path / "b", "from b", 3), "b")
    assert first.predict(b"x") == "from afrom a"
    assert second.predict(b"x") == "from bfrom bfrom b"
    assert first.predict(b"x") == "from afrom a"  # still its own after the other loaded
    # Neither archive's folder leaks into the process's import path.
    assert str(tmp_path / "a") not in sys.path and str(tmp_path / "b") not in sys.path
    assert "model" not in sys.modules


def test_registering_new_code_at_the_same_path_runs_the_new_code(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "models" / "m" / "1.0", "old")
    assert loaded(folder).predict(b"x") == "old"
    shutil.rmtree(folder)  # unregistered; another archive registered as m/1.0
    write_archive(folder, "new")
    assert loaded(folder).predict(b"x") == "new"


def test_a_sibling_change_alone_is_new_code_too(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "m", "same", 1)
    assert loaded(folder).predict(b"x") == "same"
    write_archive(folder, "same", 2)  # only model.py changes
    assert loaded(folder).predict(b"x") == "samesame"


def test_the_same_archive_loaded_twice_shares_its_modules(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "m", "once")
    first, second = loaded(folder), loaded(folder)
    assert first.entry is second.entry  # imported once: no new module per load of the same code


def test_plain_names_resolve_to_the_archive_while_its_handler_loads(tmp_path: Path) -> None:
    """TorchServe's own BaseHandler finds the model file with importlib.import_module("model")."""
    from handlers.archive_imports import archive_modules

    folders = [write_archive(tmp_path / n, n) for n in ("a", "b")]
    for folder in folders:
        archive = archive_modules(folder)
        with archive.plain_names():
            by_plain_name = importlib.import_module("model")
        assert by_plain_name is archive.load_file(folder / "model.py")
        assert by_plain_name.Net().answer() == folder.name
    assert "model" not in sys.modules  # what was there before (nothing) is back


def test_raytorch_handler_files_import_their_siblings(tmp_path: Path) -> None:
    """A raytorch ``file.py:Class`` handler of an archive imports its neighbours by name."""
    from handlers.loading import import_object

    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "labels.py").write_text(f"NAME = {name!r}\n")
        (folder / "factory.py").write_text("from labels import NAME\n\n\ndef build():\n    return NAME\n")
    assert import_object("factory.py:build", str(tmp_path / "a"))() == "a"
    assert import_object("factory.py:build", str(tmp_path / "b"))() == "b"


@pytest.mark.parametrize("name", ["json", "os"])
def test_standard_library_names_are_not_taken_by_archive_files(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / f"{name}.py").write_text("HIJACKED = True\n")
    (folder / "user.py").write_text(f"import {name}\n\n\ndef which():\n    return {name}\n")
    from handlers.loading import import_object

    assert import_object("user.py:which", str(folder))() is importlib.import_module(name)
