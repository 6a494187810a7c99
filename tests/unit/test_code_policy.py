"""What code a registration may run: default handlers, its own archive's files, and modules the
server trusts. Crafted registrations are refused before anything of theirs is imported."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.management.code_policy import check_registered_code
from deployments.management.manager import ModelManager
from deployments.management.register_params import RegisterParams
from handlers.errors import ConfigError
from tests.fixtures.management import FakeServe, make_archive
from tests.fixtures.specs import tiny_spec

EVIL = """
from pathlib import Path
Path({marker!r}).write_text("ran")
from handlers.base import BaseHandler
class H(BaseHandler):
    pass
"""


@pytest.fixture
def manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelManager:
    monkeypatch.delenv("RAYTORCH_STATE_DIR", raising=False)
    monkeypatch.delenv("RAYTORCH_MODEL_STORE", raising=False)
    settings = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(tmp_path / "store"),
        propagation_s=0,
        trusted_modules=["tests.fixtures"],
    )
    return ModelManager(settings, FakeServe())


def register(manager: ModelManager, url: str, **params: object) -> tuple[int, dict]:
    return asyncio.run(manager.register(RegisterParams(url=url, **params)))


def test_a_handler_file_outside_the_archive_is_never_run(manager: ModelManager, tmp_path: Path) -> None:
    evil = tmp_path / "some" / "dir" / "evil.py"
    evil.parent.mkdir(parents=True)
    marker = tmp_path / "ran.txt"
    evil.write_text(EVIL.format(marker=str(marker)))
    url = make_archive(manager.model_store, "m", "1.0")
    for handler in (f"{evil}:H", "../../some/dir/evil.py:H", "~/evil.py:H"):
        with pytest.raises(ConfigError, match="points outside the archive"):
            register(manager, url, handler=handler)
    assert not marker.exists()
    assert manager.store.defaults() == {} and list((manager.models_dir / ".incoming").iterdir()) == []


@pytest.mark.parametrize(
    "factory",
    ["os:system", "subprocess:run", "handlers.loading:_module_from_file", "tests.fixtures.models:os.system"],
)
def test_a_factory_outside_the_trusted_modules_is_refused(manager: ModelManager, factory: str) -> None:
    source = {"factory": factory, "factory_kwargs": {"command": "touch /tmp/raytorch-pwned"}}
    url = make_archive(manager.model_store, "m", "1.0", extra={"source": source})
    with pytest.raises(ConfigError, match=r"source\.factory .* is not allowed .* trusted_modules"):
        register(manager, url)
    assert manager.serve.deployed == []  # type: ignore[attr-defined]


def test_default_handlers_archive_files_and_trusted_modules_are_allowed() -> None:
    trusted = ["handlers.zoo", "tests.fixtures"]
    for handler in ("image_classifier", "handlers.image_classifier:ImageClassifier", "h.py:Mine"):
        check_registered_code(tiny_spec(handler=handler), trusted)
    check_registered_code(tiny_spec(handler="tests.fixtures.handlers:SlowClassifier"), trusted)
    check_registered_code(tiny_spec(source={"factory": "sub/model.py:make"}), trusted)
    check_registered_code(tiny_spec(source={"factory": "handlers.zoo:efficientnet_lite0"}), trusted)
    with pytest.raises(ConfigError, match="is not allowed"):  # a module named like a trusted one
        check_registered_code(tiny_spec(source={"factory": "handlers.zoology:make"}), trusted)
    with pytest.raises(ConfigError, match="Unknown handler"):
        check_registered_code(tiny_spec(handler="nonsense"), trusted)


def test_archive_code_can_be_switched_off(tmp_path: Path) -> None:
    spec = tiny_spec(handler="my_handler.py:Mine")
    with pytest.raises(ConfigError, match="allow_archive_code: false"):
        check_registered_code(spec, ["tests.fixtures"], allow_archive_code=False)
    check_registered_code(tiny_spec(), ["tests.fixtures"], allow_archive_code=False)


def test_a_torchserve_handler_file_is_archive_code() -> None:
    trusted = ["tests.fixtures"]  # the tiny spec's factory
    spec = tiny_spec(handler="torchserve:mnist_handler.py")
    check_registered_code(spec, trusted)  # a .mar's own handler file: allowed by default
    check_registered_code(tiny_spec(handler="torchserve:entry.py:handle"), trusted)
    with pytest.raises(ConfigError, match="allow_archive_code: false"):
        check_registered_code(spec, trusted, allow_archive_code=False)
    for outside in ("torchserve:../evil.py", "torchserve:/tmp/evil.py:handle"):
        with pytest.raises(ConfigError, match="points outside the archive"):
            check_registered_code(tiny_spec(handler=outside), trusted)


def test_torchserves_default_handler_runs_the_archives_model_file(tmp_path: Path) -> None:
    """A .mar naming TorchServe's segmenter runs TorchServe's class over the archive's model.py:
    that file is archive code; a TorchScript archive has none."""
    import json

    (tmp_path / "MAR-INF").mkdir()
    manifest = {"model": {"modelName": "fcn", "handler": "image_segmenter", "serializedFile": "w.pth"}}
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    spec = tiny_spec(
        handler="torchserve:ts.torch_handler.image_segmenter", base_dir=str(tmp_path), source=None
    )
    check_registered_code(spec, [], allow_archive_code=False)  # no Python file of the archive runs
    manifest["model"]["modelFile"] = "model.py"
    (tmp_path / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"model file 'model\.py' is Python code from the archive"):
        check_registered_code(spec, [], allow_archive_code=False)
    check_registered_code(spec, [])
