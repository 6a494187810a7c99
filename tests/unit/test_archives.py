"""Model archives: TorchServe .mar files, our own format, and refusal of unsafe archives."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from deployments.management.archive_sources import local_archive
from deployments.management.capacity import missing_resources
from deployments.management.register_params import RegisterParams, app_args
from handlers.archive import extract, read_extracted, write_archive
from handlers.errors import BadInputError, ConfigError, ModelNotFoundError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures.models import tiny_classifier

MODEL_PY = """
from tests.fixtures.models import TinyClassifier


class Classifier(TinyClassifier):
    def __init__(self):
        super().__init__(num_classes=4)
"""


def make_mar(path: Path, handler: str = "image_classifier", config: str | None = None) -> Path:
    """A .mar laid out exactly as torch-model-archiver writes it (eager mode)."""
    weights = path.parent / "w.pth"
    torch.save(tiny_classifier(num_classes=4).state_dict(), weights)
    manifest = {
        "runtime": "python",
        "model": {
            "modelName": "tiny",
            "serializedFile": "w.pth",
            "handler": handler,
            "modelFile": "model.py",
            "modelVersion": "2.0",
        },
    }
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        archive.writestr("model.py", MODEL_PY)
        archive.write(weights, "w.pth")
        archive.writestr("index_to_name.json", json.dumps({str(i): ["n0", f"thing-{i}"] for i in range(4)}))
        if config:
            archive.writestr("model-config.yaml", config)
    return path


def test_mar_archive_loads_and_answers(tmp_path: Path, cat_png: bytes) -> None:
    mar = make_mar(tmp_path / "tiny.mar", config="batchSize: 4\nmaxBatchDelay: 20\nminWorkers: 2\n")
    found = read_extracted(extract(mar, tmp_path / "out"))
    assert found.model["name"] == "tiny" and found.model["version"] == "2.0"
    assert found.batching == {"max_batch_size": 4, "batch_wait_timeout_s": 0.02}
    assert found.resources == {"num_replicas": 2}
    spec = ModelSpec.model_validate({**found.model, "preprocess": {"resize": 64, "crop": 56}})
    handler = create_handler(spec)
    handler.load()
    result = handler.predict(cat_png)
    assert len(result) == 4 and all(label.startswith("thing-") for label in result)


def test_register_parameters_override_the_archive(tmp_path: Path) -> None:
    found = read_extracted(extract(make_mar(tmp_path / "tiny.mar"), tmp_path / "out"))
    params = RegisterParams(
        url="tiny.mar", model_name="renamed", batch_size=16, max_batch_delay=50, initial_workers=3
    )
    args = app_args(found, params, default_num_cpus=0.25)
    assert args.model.name == "renamed"
    assert (args.batching.max_batch_size, args.batching.batch_wait_timeout_s) == (16, 0.05)
    assert (args.resources.num_replicas, args.resources.num_cpus) == (3, 0.25)
    assert app_args(found, RegisterParams(url="tiny.mar")).resources.num_cpus == 0  # shared cores


def test_a_handler_that_is_neither_in_the_archive_nor_a_default_is_refused(tmp_path: Path) -> None:
    mar = make_mar(tmp_path / "tiny.mar", handler="my_handler.py")
    with pytest.raises(ConfigError, match="neither a file in the archive nor one of TorchServe's default"):
        read_extracted(extract(mar, tmp_path / "out"))


@pytest.mark.parametrize("entry", ["../evil.py", "/etc/evil", "a/../../evil"])
def test_path_traversal_entries_are_refused(tmp_path: Path, entry: str) -> None:
    path = tmp_path / "evil.mar"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(entry, "x")
    with pytest.raises(BadInputError, match="outside the archive"):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "evil.py").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.mar"
    path.write_bytes(b"not a zip")
    with pytest.raises(BadInputError, match="not a zip"):
        extract(path, tmp_path / "out")


def test_our_archive_format_round_trips(tmp_path: Path, cat_png: bytes) -> None:
    weights = tmp_path / "tiny.pth"
    torch.save(tiny_classifier().state_dict(), weights)
    spec = {
        "name": "ours",
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "state_dict": "tiny.pth"},
        "preprocess": {"resize": 64, "crop": 56},
    }
    archive = write_archive(spec, [weights], tmp_path / "ours.zip", {"batching": {"max_batch_size": 2}})
    found = read_extracted(extract(archive, tmp_path / "out"))
    assert found.batching == {"max_batch_size": 2}
    handler = create_handler(ModelSpec.model_validate(found.model))
    handler.load()
    assert len(handler.predict(cat_png)) == 5


@pytest.mark.parametrize("url", ["../outside.mar", "/etc/passwd", "sub/../../x.mar"])
def test_urls_cannot_leave_the_model_store(tmp_path: Path, url: str) -> None:
    (tmp_path / "store").mkdir()
    with pytest.raises(BadInputError, match="inside the model store"):
        local_archive(url, tmp_path / "store")


def test_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"Model not found at: nosuch\.mar"):
        local_archive("nosuch.mar", tmp_path)


def test_missing_resources_names_what_is_short(tmp_path: Path) -> None:
    found = read_extracted(extract(make_mar(tmp_path / "tiny.mar"), tmp_path / "out"))
    args = app_args(found, RegisterParams(url="x", initial_workers=2, num_cpus=1), 0.5)
    assert missing_resources(args, {"CPU": 2.0}) is None
    assert "CPU 2 needed, 0.9 free" in (missing_resources(args, {"CPU": 0.9}) or "")
