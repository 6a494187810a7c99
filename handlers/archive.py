"""Model archives: TorchServe ``.mar`` files and raytorch's own archive format.

Both are zip files (ours may also be a plain directory). Reading one yields a
:class:`ArchiveModel`: a model spec whose relative paths point into the extracted folder,
plus the serving settings the archive carries. Unpacking (:mod:`handlers.unpacking`) refuses
entries that would leave the folder, links and bombs; reading refuses manifests that name
files outside the archive, and manifests too large, too deep or malformed to trust.
"""

from __future__ import annotations

import ast
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from handlers.errors import BadInputError, ConfigError
from handlers.torchserve.names import TORCHSERVE_PREFIX, mar_handler
from handlers.unpacking import check_named_paths, extract, leaves_archive

__all__ = ["ArchiveModel", "extract", "read_extracted", "request_handler", "write_archive"]

MAR_MANIFEST = "MAR-INF/MANIFEST.json"
RAYTORCH_MANIFEST = "raytorch-model.yaml"
MODEL_CONFIG = "model-config.yaml"
# Manifests and model files are small text; anything bigger is not a manifest worth parsing.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_MODEL_FILE_BYTES = 4 * 1024 * 1024


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
    # A .mar's requirements file (the archiver's --requirements-file), inside the archive.
    requirements: Path | None = None


def request_handler(handler: str, found: ArchiveModel) -> str:
    """What a register request's ``handler=`` means for this archive: TorchServe's rules for
    a .mar (a file of the archive, or one of its default handlers), ours otherwise."""
    if found.kind != "mar":
        return handler
    return mar_handler(handler, Path(found.model["base_dir"]))


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a few lines of ``&a [*b, *b, ...]`` expand into
    billions of values once the spec is validated or saved (the YAML "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in an archive's YAML files")
        return super().compose_node(parent, index)


def _read_text(path: Path, limit: int = MAX_MANIFEST_BYTES) -> str:
    if path.stat().st_size > limit:
        raise BadInputError(f"{path.name} is over {limit} bytes: refused")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path.name} is not UTF-8 text") from None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        raise BadInputError(f"{path.name} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInputError(f"{path.name} is nested too deeply") from None


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.load(_read_text(path), Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        raise BadInputError(f"{path.name} is not valid YAML: {exc}") from None
    except RecursionError:
        raise BadInputError(f"{path.name} is nested too deeply") from None


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadInputError(f"{what} must be a mapping, not {type(value).__name__}")
    return value


def _inside(folder: Path, name: Any, what: str) -> Path:
    """A file the manifest names, which must be a relative path inside the archive."""
    if not isinstance(name, str) or not name:
        raise BadInputError(f"MANIFEST.json: {what} must be a file name")
    if leaves_archive(name):
        raise BadInputError(f"MANIFEST.json: {what} {name!r} points outside the archive: refused")
    return folder / name


def _single_module_class(model_file: Path) -> str:
    """The class a TorchServe eager-mode model file defines (it must define exactly one)."""
    if not model_file.is_file():
        raise ConfigError(f"Model file {model_file.name} named in MANIFEST.json is not in the archive")
    try:
        tree = ast.parse(_read_text(model_file, MAX_MODEL_FILE_BYTES), filename=model_file.name)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise ConfigError(f"Model file {model_file.name} is not valid Python: {exc}") from None
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    if len(classes) != 1:
        raise ConfigError(
            f"Model file {model_file.name} must define exactly one nn.Module class, found {classes or 'none'}"
        )
    return classes[0]


def _mar_model(folder: Path, manifest: Any) -> ArchiveModel:
    model = _mapping(_mapping(manifest, "MANIFEST.json").get("model"), "MANIFEST.json's model")
    name, serialized = model.get("modelName"), model.get("serializedFile")
    if not name:
        raise BadInputError("MANIFEST.json lacks model.modelName")
    handler = model.get("handler") or "image_classifier"
    if not isinstance(handler, str):
        raise BadInputError("MANIFEST.json: model.handler must be a handler name")
    handler = mar_handler(handler, folder)
    if serialized is not None:
        _inside(folder, serialized, "model.serializedFile")
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
        cls = _single_module_class(_inside(folder, model["modelFile"], "model.modelFile"))
        spec["source"] = {"factory": f"{model['modelFile']}:{cls}", "state_dict": serialized}
    else:
        spec["source"] = {"torchscript": serialized}
    if (folder / "index_to_name.json").is_file():
        spec["labels"] = "index_to_name.json"
    result = ArchiveModel(spec, kind="mar", runtime=str(manifest.get("runtime") or "python"))
    if model.get("requirementsFile"):
        result.requirements = _inside(folder, model["requirementsFile"], "model.requirementsFile")
    # The archiver's --config-file keeps its own name, which the manifest records.
    config = _inside(folder, model.get("configFile") or MODEL_CONFIG, "model.configFile")
    if config.is_file():
        _apply_model_config(result, _mapping(_load_yaml(config), MODEL_CONFIG))
    return result


def _apply_model_config(result: ArchiveModel, config: dict[str, Any]) -> None:
    """TorchServe's model-config.yaml: the serving settings it shares with ours."""
    try:
        if "batchSize" in config:
            result.batching["max_batch_size"] = int(config["batchSize"])
        if "maxBatchDelay" in config:  # TorchServe counts milliseconds
            result.batching["batch_wait_timeout_s"] = float(config["maxBatchDelay"]) / 1000
        if "minWorkers" in config:
            result.resources["num_replicas"] = int(config["minWorkers"])
        if "responseTimeout" in config:
            result.response_timeout_s = float(config["responseTimeout"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise BadInputError(f"{MODEL_CONFIG}: {exc}") from None


def read_extracted(folder: Path) -> ArchiveModel:
    """Interpret an extracted archive folder (.mar layout or raytorch layout)."""
    if (folder / MAR_MANIFEST).is_file():
        return _mar_model(folder, _load_json(folder / MAR_MANIFEST))
    if (folder / RAYTORCH_MANIFEST).is_file():
        data = _mapping(_load_yaml(folder / RAYTORCH_MANIFEST), RAYTORCH_MANIFEST)
        if "model" not in data:
            raise BadInputError(f"{RAYTORCH_MANIFEST} must hold a 'model' block")
        model = dict(_mapping(data["model"], f"{RAYTORCH_MANIFEST}'s model"))
        check_named_paths(model)
        model["base_dir"] = str(folder)
        batching = _mapping(data.get("batching"), f"{RAYTORCH_MANIFEST}'s batching")
        resources = _mapping(data.get("resources"), f"{RAYTORCH_MANIFEST}'s resources")
        return ArchiveModel(model, dict(batching), dict(resources))
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
