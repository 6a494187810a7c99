"""Per-model Python dependencies (TorchServe's install_py_dep_per_model): a .mar's
requirements file is checked at registration, pip-installed into a folder of its own (once per
content) and that folder goes on its replicas' PYTHONPATH only.

Nothing is downloaded (tests never download): what pip installs is a wheel made here, and
PIP_NO_INDEX keeps pip off any index, so a missing package fails as it would offline.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deployments.common.management_args import ManagementArgs
from deployments.common.settings import ResourcesConfig
from deployments.management.manager import ModelManager
from deployments.management.pools import PoolManager
from deployments.management.py_deps import install_requirements
from deployments.management.register_params import RegisterParams, app_args
from deployments.model.builder import actor_options
from handlers.archive import extract, read_extracted
from handlers.errors import BadInputError, DependencyInstallError, RequestTimeoutError
from handlers.requirements import parse_requirements
from tests.fixtures import torchserve_archives as ts
from tests.fixtures.local_wheel import build_wheel
from tests.fixtures.management import FakeServe

WHEEL = "rt_demo_dep-1.0-py3-none-any.whl"


@pytest.fixture(autouse=True)
def no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def noop_with_requirements(store: Path, work: Path, requirements: str, wheel: bool = False) -> Path:
    """The noop archive with a requirements file (and a wheel of ``rt_demo_dep`` beside it)."""
    work.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    (work / "service.py").write_text(ts.NOOP_CLASS)
    (work / "requirements.txt").write_text(requirements)
    files = {"requirements_file": "requirements.txt"}
    if wheel:
        build_wheel(work, "rt_demo_dep", "1.0", "VALUE = 42\n")
        files["extra_files"] = WHEEL
    return ts.archive(store, work, "deps", "1.0", "service.py", **files)


def manager_for(tmp_path: Path, store: Path, **settings: object) -> ModelManager:
    args = ManagementArgs(
        state_dir=str(tmp_path / "state"),
        model_store=str(store),
        propagation_s=0,
        install_py_dep_per_model=True,
        **settings,
    )
    return ModelManager(args, FakeServe())


def test_requirement_lines_are_checked() -> None:
    text = "# pinned\nsix==1.16.0\n\nattrs >=22, <24  # for the handler\ntomli; python_version < '3.11'\n"
    assert parse_requirements(text) == ["six==1.16.0", "attrs<24,>=22", 'tomli; python_version < "3.11"']
    for line, problem in [
        ("-r other.txt", "pip options are not accepted"),
        ("--index-url http://evil/simple", "pip options are not accepted"),
        ("pkg @ https://example.com/pkg.whl", "from URLs or paths are not accepted"),
        ("not a requirement!!", "is not a valid requirement"),
        ("./pkg-1.0-py3-none-any.whl", "only paths inside the archive"),  # no archive: no path
    ]:
        with pytest.raises(BadInputError, match=problem) as info:
            parse_requirements(f"six\n{line}\n")
        assert "requirements.txt line 2" in info.value.message and info.value.status == 400


def test_paths_are_accepted_only_inside_the_archive(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    (archive / WHEEL).write_bytes(b"wheel")
    (tmp_path / "outside.whl").write_bytes(b"wheel")
    assert parse_requirements(f"./{WHEEL}\n{WHEEL}\nsix\n", base=archive) == [f"./{WHEEL}", WHEEL, "six"]
    for line, problem in [
        ("../outside.whl", "only paths inside the archive"),
        (str(tmp_path / "outside.whl"), "only paths inside the archive"),
        ("./missing-1.0-py3-none-any.whl", "the archive has no such file"),
    ]:
        with pytest.raises(BadInputError, match=problem):
            parse_requirements(line, base=archive)


def test_the_archives_requirements_become_its_replicas_runtime_env(tmp_path: Path) -> None:
    archive = noop_with_requirements(tmp_path / "store", tmp_path / "w", "six==1.16.0\nattrs\n")
    found = read_extracted(extract(archive, tmp_path / "x"))
    assert found.requirements is not None and found.requirements.name == "requirements.txt"
    params = RegisterParams(url=archive.name)
    args = app_args(found, params, install_py_dep_per_model=True)
    assert args.resources.pip_packages == ["six==1.16.0", "attrs"]
    options = actor_options(args.resources, 0)
    assert options["runtime_env"] == {"pip": {"packages": ["six==1.16.0", "attrs"], "pip_check": False}}
    # TorchServe's default (false): the file is ignored, the replicas get no runtime_env.
    plain = app_args(found, params)
    assert plain.resources.pip_packages == [] and "runtime_env" not in actor_options(plain.resources, 0)
    # A pool replica's environment is every pooled model's: no packages of its own there.
    with pytest.raises(BadInputError, match="a pooled model cannot have"):
        asyncio.run(PoolManager._no_own_packages(args))
    asyncio.run(PoolManager._no_own_packages(plain))


def test_a_bad_requirements_file_fails_the_registration_with_400(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = noop_with_requirements(store, tmp_path / "w", "six\n-e git+https://example.com/x.git\n")
    manager = manager_for(tmp_path, store)
    with pytest.raises(BadInputError, match=r"requirements\.txt line 2"):
        asyncio.run(manager.register(RegisterParams(url=archive.name)))
    assert manager.store.defaults() == {}


def test_resources_without_packages_need_no_runtime_env() -> None:
    assert actor_options(ResourcesConfig(num_cpus=0.5), 1) == {"num_cpus": 0.5, "num_gpus": 1}


def test_installed_packages_go_first_on_the_replicas_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/checkout")
    resources = ResourcesConfig(pip_packages=["six"], py_deps_dir="/state/py_deps/abc")
    env = actor_options(resources, 0)["runtime_env"]
    assert env == {"env_vars": {"PYTHONPATH": "/state/py_deps/abc:/checkout"}}  # no pip venv


def test_registration_installs_the_requirements_once_into_a_folder_of_their_own(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = noop_with_requirements(store, tmp_path / "w", f"./{WHEEL}\n", wheel=True)
    manager = manager_for(tmp_path, store)
    args, _ = asyncio.run(manager.intake.accept(RegisterParams(url=archive.name)))
    deps = Path(args.resources.py_deps_dir)
    assert (deps / "rt_demo_dep.py").read_text() == "VALUE = 42\n"
    assert deps.parent == tmp_path / "state" / "py_deps" and not list(deps.parent.glob(".incoming-*"))
    # The same requirements again: the installed folder, pip does not run.
    manager.intake.release("deps", "1.0")
    requirements = Path(args.model.base_dir) / "requirements.txt"
    assert install_requirements(requirements, [f"./{WHEEL}"], deps.parent, 0.001) == deps


def test_a_failed_install_names_the_package_and_pips_error_and_leaves_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    archive = noop_with_requirements(store, tmp_path / "w", "rt-no-such-package==9.9\n")
    manager = manager_for(tmp_path, store)
    with pytest.raises(DependencyInstallError) as info:
        asyncio.run(manager.register(RegisterParams(url=archive.name)))
    assert info.value.status == 400
    assert "rt-no-such-package==9.9" in info.value.message
    assert "No matching distribution found for rt-no-such-package==9.9" in info.value.message
    assert manager.store.defaults() == {}
    assert not (tmp_path / "state" / "models" / "deps" / "1.0").exists()
    assert not list((tmp_path / "state" / "py_deps").iterdir())
    # The claim is gone too: fixed, the same name and version register.
    (tmp_path / "w" / "requirements.txt").write_text("")
    fixed = noop_with_requirements(store, tmp_path / "w", "")
    asyncio.run(manager.register(RegisterParams(url=fixed.name)))
    assert "deps" in manager.store.defaults()


def test_a_hung_install_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six\n")
    with pytest.raises(RequestTimeoutError, match=r"\(six\) took over 0.05s: pip was stopped") as info:
        install_requirements(requirements, ["six"], tmp_path / "py_deps", 0.05)
    assert info.value.status == 504 and not list((tmp_path / "py_deps").iterdir())
