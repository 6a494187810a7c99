"""Model archives: TorchServe ``.mar`` files and raytorch's own archive format.

Both are zip files (ours may also be a plain directory). Reading one yields a
:class:`ArchiveModel`: a model spec whose relative paths point into the extracted folder,
plus the serving settings the archive carries. Extraction refuses absolute paths, ``..``
components, links and oversized contents, so an archive cannot write outside its folder.
"""

from __future__ import annotations

import ast
import json
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from handlers.errors import BadInputError, ConfigError
from handlers.torchserve.names import TORCHSERVE_PREFIX, mar_handler

MAR_MANIFEST = "MAR-INF/MANIFEST.json"
RAYTORCH_MANIFEST = "raytorch-model.yaml"
MAX_EXTRACTED_BYTES = 8 * 1024**3


@dataclass
class ArchiveModel:
    """What an archive asks to serve: a ModelSpec dict and serving settings.

    ``kind`` is ``"mar"`` for TorchServe archives (their handler names follow TorchServe's
    rules, see :func:`request_handler`) and ``"raytorch"`` for ours.
    """

    model: dict[str, Any]
    batching: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    response_timeout_s: float | None = None
    kind: str = "raytorch"
    runtime: str = "python"


def request_handler(handler: str, found: ArchiveModel) -> str:
    """What a register request's ``handler=`` means for this archive: TorchServe's rules for
    a .mar (a file of the archive, or one of its default handlers), ours otherwise."""
    if found.kind != "mar":
        return handler
    return mar_handler(handler, Path(found.model["base_dir"]))


def _checked_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    total = 0
    for info in archive.infolist():
        path = PurePosixPath(info.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in info.filename:
            raise BadInputError(f"Archive entry {info.filename!r} points outside the archive: refused")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BadInputError(f"Archive entry {info.filename!r} is a symbolic link: refused")
        total += info.file_size
        if total > MAX_EXTRACTED_BYTES:
            raise BadInputError(f"Archive expands to more than {MAX_EXTRACTED_BYTES} bytes: refused")
    return archive.infolist()


def extract(archive_path: Path, target: Path) -> Path:
    """Safely unpack a zip archive (or copy a directory archive) into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        if archive_path.is_dir():
            shutil.copytree(archive_path, staging, dirs_exist_ok=True, symlinks=False)
        else:
            try:
                with zipfile.ZipFile(archive_path) as archive:
                    for info in _checked_members(archive):
                        archive.extract(info, staging)
            except zipfile.BadZipFile:
                raise BadInputError(f"{archive_path.name} is not a zip archive (.mar or .zip)") from None
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _single_module_class(model_file: Path) -> str:
    """The class a TorchServe eager-mode model file defines (it must define exactly one)."""
    tree = ast.parse(model_file.read_text(encoding="utf-8"), filename=str(model_file))
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    if len(classes) != 1:
        raise ConfigError(
            f"Model file {model_file.name} must define exactly one nn.Module class, found {classes or 'none'}"
        )
    return classes[0]


def _mar_model(folder: Path, manifest: dict[str, Any]) -> ArchiveModel:
    model = manifest.get("model") or {}
    name, serialized = model.get("modelName"), model.get("serializedFile")
    if not name:
        raise BadInputError("MANIFEST.json lacks model.modelName")
    handler = mar_handler(model.get("handler") or "image_classifier", folder)
    spec: dict[str, Any] = {
        "name": name,
        "version": str(model.get("modelVersion") or "1.0"),
        "handler": handler,
        "base_dir": str(folder),
    }
    if handler.startswith(TORCHSERVE_PREFIX):
        pass  # the archive's own handler file loads its model, as on TorchServe
    elif not serialized:
        raise BadInputError("MANIFEST.json lacks model.serializedFile")
    elif model.get("modelFile"):
        cls = _single_module_class(folder / model["modelFile"])
        spec["source"] = {"factory": f"{model['modelFile']}:{cls}", "state_dict": serialized}
    else:
        spec["source"] = {"torchscript": serialized}
    if (folder / "index_to_name.json").is_file():
        spec["labels"] = "index_to_name.json"
    result = ArchiveModel(spec, kind="mar", runtime=str(manifest.get("runtime") or "python"))
    config_path = folder / "model-config.yaml"
    if config_path.is_file():
        config = yaml.safe_load(config_path.read_text()) or {}
        if "batchSize" in config:
            result.batching["max_batch_size"] = int(config["batchSize"])
        if "maxBatchDelay" in config:  # TorchServe counts milliseconds
            result.batching["batch_wait_timeout_s"] = float(config["maxBatchDelay"]) / 1000
        if "minWorkers" in config:
            result.resources["num_replicas"] = int(config["minWorkers"])
        if "responseTimeout" in config:
            result.response_timeout_s = float(config["responseTimeout"])
    return result


def read_extracted(folder: Path) -> ArchiveModel:
    """Interpret an extracted archive folder (.mar layout or raytorch layout)."""
    if (folder / MAR_MANIFEST).is_file():
        try:
            manifest = json.loads((folder / MAR_MANIFEST).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BadInputError(f"MANIFEST.json is not valid JSON: {exc}") from None
        return _mar_model(folder, manifest)
    if (folder / RAYTORCH_MANIFEST).is_file():
        data = yaml.safe_load((folder / RAYTORCH_MANIFEST).read_text()) or {}
        if not isinstance(data, dict) or "model" not in data:
            raise BadInputError(f"{RAYTORCH_MANIFEST} must hold a 'model' block")
        model = dict(data["model"])
        model["base_dir"] = str(folder)
        return ArchiveModel(model, dict(data.get("batching") or {}), dict(data.get("resources") or {}))
    raise BadInputError(f"Not a model archive: neither {MAR_MANIFEST} nor {RAYTORCH_MANIFEST} found")


def write_archive(
    spec: dict[str, Any], files: list[Path], output: Path, extra: dict[str, Any] | None = None
) -> Path:
    """Package a raytorch archive: the spec (paths relative to the archive) plus its files."""
    manifest = {"model": spec, **(extra or {})}
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(RAYTORCH_MANIFEST, yaml.safe_dump(manifest, sort_keys=False))
        for path in files:
            archive.write(path, arcname=path.name)
    return output
