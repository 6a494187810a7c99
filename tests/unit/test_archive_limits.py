"""Archives a token holder could craft: bombs, odd entries, links, and manifests that name files
outside the archive or that are too large, too deep or malformed. Each gets a 400 that says
why, and nothing is left behind."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from handlers import unpacking
from handlers.archive import extract, read_extracted
from handlers.errors import BadInputError, ConfigError, ModelLoadError
from handlers.loading import resolve_path


def zip_of(path: Path, entries: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def refused(archive: Path, target: Path, fragment: str) -> None:
    with pytest.raises(BadInputError, match=fragment):
        extract(archive, target)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir() if p.name.startswith(".extract-")] == []


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch) -> None:
    bomb = zip_of(tmp_path / "bomb.zip", [("weights.pth", b"\0" * (200 * 1024 * 1024))])
    assert bomb.stat().st_size < 300_000  # 200 MiB in about 200 KB
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    refused(bomb, tmp_path / "out", r"expands \d+ times .* more than 100 times")
    assert opened == []  # decided from the central directory alone: no entry was inflated


def test_small_entries_may_compress_well(tmp_path: Path) -> None:
    labels = json.dumps({str(i): "x" for i in range(100_000)}).encode()  # ~1.4 MB, compresses a lot
    extract(zip_of(tmp_path / "ok.zip", [("index_to_name.json", labels)]), tmp_path / "out")
    assert (tmp_path / "out" / "index_to_name.json").read_bytes() == labels


def test_too_many_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(unpacking, "MAX_ENTRIES", 100)
    many = zip_of(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(101)], zipfile.ZIP_STORED)
    refused(many, tmp_path / "out", "101 entries, more than 100")


def test_the_default_entry_limit_refuses_thirty_thousand_entries(tmp_path: Path) -> None:
    many = zip_of(tmp_path / "many.zip", [(f"f{i}", b"") for i in range(30_000)], zipfile.ZIP_STORED)
    refused(many, tmp_path / "out", "more than 10000")


def test_duplicate_names_are_refused_instead_of_the_last_one_winning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        twice = zip_of(tmp_path / "twice.zip", [("model.py", b"good"), ("model.py", b"evil")])
    refused(twice, tmp_path / "out", "'model.py' appears twice")


@pytest.mark.parametrize(
    "names", [["a", "a/b"], ["a/b", "a"], ["a/", "a"], ["x/a", "x/a/b/c"]], ids=lambda n: " then ".join(n)
)
def test_a_name_that_is_both_a_file_and_a_folder_is_a_400_not_a_500(tmp_path: Path, names: list[str]) -> None:
    archive = zip_of(tmp_path / "clash.zip", [(name, b"" if name.endswith("/") else b"x") for name in names])
    refused(archive, tmp_path / "out", "both a file and a folder")


def test_a_damaged_entry_is_a_400(tmp_path: Path) -> None:
    archive = zip_of(tmp_path / "bad.zip", [("w.pth", b"A" * 5000)], zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[data.index(b"AAAA") + 10] = ord("B")  # the CRC no longer matches
    archive.write_bytes(bytes(data))
    refused(archive, tmp_path / "out", "not a readable zip archive")


def test_links_in_a_directory_archive_are_refused_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    folder = tmp_path / "store" / "linked"
    folder.mkdir(parents=True)
    (folder / "raytorch-model.yaml").write_text("model: {}")
    (folder / "labels.json").symlink_to(secret)
    refused(folder, tmp_path / "out", "'labels.json' is a symbolic link")
    (folder / "labels.json").unlink()
    (folder / "sub").symlink_to(tmp_path, target_is_directory=True)
    refused(folder, tmp_path / "out", "'sub' is a symbolic link")


def test_special_files_in_a_directory_archive_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "store" / "fifo"
    folder.mkdir(parents=True)
    os.mkfifo(folder / "pipe")  # copying it would block forever
    refused(folder, tmp_path / "out", "'pipe' is not a regular file")


def test_a_directory_archive_is_copied_with_its_subfolders(tmp_path: Path) -> None:
    folder = tmp_path / "store" / "plain"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.pth").write_bytes(b"weights")
    extract(folder, tmp_path / "out")
    assert (tmp_path / "out" / "sub" / "w.pth").read_bytes() == b"weights"


def mar(tmp_path: Path, model: dict, extra: list[tuple[str, bytes]] = ()) -> Path:  # type: ignore[assignment]
    manifest = {"model": {"modelName": "m", "serializedFile": "w.pth", **model}}
    entries = [("MAR-INF/MANIFEST.json", json.dumps(manifest).encode()), ("w.pth", b"x"), *extra]
    return extract(zip_of(tmp_path / "m.mar", entries), tmp_path / "out")


@pytest.mark.parametrize(
    ("field", "value"),
    [("modelFile", "/etc/passwd"), ("modelFile", "../../outside.py"), ("serializedFile", "/root/w.pth")],
)
def test_a_mar_cannot_name_a_file_outside_itself(tmp_path: Path, field: str, value: str) -> None:
    folder = mar(tmp_path, {field: value})
    with pytest.raises(BadInputError, match=f"model.{field} '{value}' points outside the archive"):
        read_extracted(folder)


@pytest.mark.parametrize(
    ("model", "where"),
    [
        ({"source": {"state_dict": "/etc/shadow", "factory": "m.py:f"}}, "source.state_dict"),
        ({"source": {"torchscript": "../../model.pt"}}, "source.torchscript"),
        ({"source": {"factory": "/tmp/evil.py:make"}}, "source.factory"),
        ({"source": {"onnx": "~/.ssh/id_rsa"}}, "source.onnx"),
        ({"source": {"torchscript": "pkg://torch/../../etc/passwd"}}, "source.torchscript"),
        ({"handler": "/some/dir/evil.py:H", "source": {"torchscript": "m.pt"}}, "handler"),
        ({"labels": "/etc/hosts", "source": {"torchscript": "m.pt"}}, "labels"),
        (
            {"options": {"vocabulary": "../../words.txt"}, "source": {"torchscript": "m.pt"}},
            "options.vocabulary",
        ),
    ],
)
def test_our_archive_cannot_name_a_file_outside_itself(tmp_path: Path, model: dict, where: str) -> None:
    manifest = yaml.safe_dump({"model": {"name": "m", **model}})
    folder = extract(zip_of(tmp_path / "m.zip", [("raytorch-model.yaml", manifest.encode())]), tmp_path / "o")
    with pytest.raises(BadInputError, match=f"{where} .* points outside the archive"):
        read_extracted(folder)


def test_files_inside_the_archive_and_installed_packages_are_fine(tmp_path: Path) -> None:
    model = {
        "name": "m",
        "handler": "my_handler.py:Mine",
        "source": {"factory": "sub/model.py:make", "state_dict": "pkg://some_package/w.pth"},
        "labels": "index_to_name.json",
    }
    manifest = yaml.safe_dump({"model": model}).encode()
    folder = extract(zip_of(tmp_path / "m.zip", [("raytorch-model.yaml", manifest)]), tmp_path / "o")
    assert read_extracted(folder).model["source"]["factory"] == "sub/model.py:make"


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("raytorch-model.yaml", "a: &a [x, x, x]\nb: &b [*a, *a, *a]\nmodel: [*b, *b]\n", "aliases"),
        ("raytorch-model.yaml", "[" * 50_000 + "]" * 50_000, "nested too deeply|not valid YAML"),
        ("raytorch-model.yaml", "model: just a string\n", "must be a mapping"),
        ("raytorch-model.yaml", "- a list\n", "must be a mapping"),
        ("raytorch-model.yaml", "model: {name: m}\nbatching: 3\n", "batching must be a mapping"),
        ("raytorch-model.yaml", "x" * (2 * 1024 * 1024), "over 1048576 bytes"),
        ("MAR-INF/MANIFEST.json", "[" * 200_000 + "]" * 200_000, "nested too deeply"),
        ("MAR-INF/MANIFEST.json", "[1, 2]", "must be a mapping"),
        ("MAR-INF/MANIFEST.json", '{"model": "resnet"}', "must be a mapping"),
        ("MAR-INF/MANIFEST.json", b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_malformed_manifests_are_400s(tmp_path: Path, name: str, content: str | bytes, fragment: str) -> None:
    data = content.encode() if isinstance(content, str) else content
    folder = extract(zip_of(tmp_path / "m.zip", [(name, data)]), tmp_path / "o")
    with pytest.raises(BadInputError, match=fragment):
        read_extracted(folder)


@pytest.mark.parametrize("config", ["batchSize: lots\n", "minWorkers: [1]\n", "[1, 2]\n"])
def test_a_malformed_model_config_is_a_400(tmp_path: Path, config: str) -> None:
    folder = mar(tmp_path, {}, [("model-config.yaml", config.encode())])
    with pytest.raises(BadInputError, match=r"model-config\.yaml"):
        read_extracted(folder)


@pytest.mark.parametrize("source", ["x = (" * 300 + ")" * 300, "class A(:\n", "\0"])
def test_a_model_file_that_is_not_python_is_a_400(tmp_path: Path, source: str) -> None:
    folder = mar(tmp_path, {"modelFile": "model.py"}, [("model.py", source.encode())])
    with pytest.raises(ConfigError, match="not valid Python"):
        read_extracted(folder)


def test_a_package_path_cannot_leave_its_package() -> None:
    with pytest.raises(ModelLoadError, match="leaves its package"):
        resolve_path("pkg://handlers/../deployments/app.py")
