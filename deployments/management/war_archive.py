"""TorchServe's workflow archive (``.war``, built by ``torch-workflow-archiver``): find it,
unpack it safely, read its manifest, spec and handler file. No Ray, no torch.

A ``.war`` is a zip holding ``WAR-INF/MANIFEST.json`` (``workflow``: ``workflowName``,
``specFile``, ``handler``), the YAML spec and the handler file with the function nodes. The
handler file is only parsed here (its top-level functions listed), never run: function nodes
run in the workflow's own replicas, and only where the server runs archive code at all
(``allow_archive_code``).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

from deployments.common.workflow_spec import TorchServeSpec, parse_torchserve_spec
from handlers.errors import BadInputError, ConfigError
from handlers.spec import NAME_PATTERN
from handlers.unpacking import extract, leaves_archive

MANIFEST = "WAR-INF/MANIFEST.json"
MAX_TEXT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class WarContents:
    """An unpacked ``.war``: its folder, the workflow's name, its spec and its handler file."""

    folder: Path
    name: str
    spec: TorchServeSpec
    handler: Path | None


def _text(path: Path, what: str) -> str:
    if not path.is_file():
        raise BadInputError(f"Invalid workflow archive: {what} {path.name} is missing")
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise BadInputError(f"Invalid workflow archive: {what} {path.name} is over {MAX_TEXT_BYTES} bytes")
    return path.read_text(encoding="utf-8", errors="replace")


def read_war(archive: Path, target: Path, name: str | None) -> WarContents:
    """Unpack ``archive`` into ``target`` and read it; 400 naming what is wrong (TorchServe's
    sentences where it has them). ``name``: the request's ``workflow_name``, which wins."""
    folder = extract(archive, target)
    try:
        manifest = json.loads(_text(folder / MANIFEST, "the manifest"))
    except ValueError as exc:
        raise BadInputError(f"Invalid workflow archive: {MANIFEST} is not JSON: {exc}") from None
    workflow = manifest.get("workflow") if isinstance(manifest, dict) else None
    if not isinstance(workflow, dict):
        raise BadInputError("Missing Workflow entry in manifest file.")
    name = name or workflow.get("workflowName")
    if not name:
        raise BadInputError("Workflow name is not defined.")
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name) or "__" in name:
        raise BadInputError(
            f"Invalid workflow name {str(name)[:80]!r}: names are 1-128 ASCII letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, without '__' (it separates workflow and node)"
        )
    spec_file, handler_file = workflow.get("specFile"), workflow.get("handler")
    for ref in (spec_file, handler_file):
        if ref is not None and (not isinstance(ref, str) or leaves_archive(ref)):
            raise BadInputError(f"Invalid workflow archive: {ref!r} points outside the archive")
    if not spec_file:
        raise BadInputError("Invalid workflow archive: the manifest names no specFile")
    spec = parse_torchserve_spec(_text(folder / spec_file, "the spec file"))
    handler = folder / handler_file if handler_file else None
    return WarContents(folder, name, spec, handler)


def check_functions(contents: WarContents, allow_archive_code: bool) -> None:
    """400 unless the handler file defines every function node (read, not run), and the server
    runs archive code when there are any."""
    wanted = contents.spec.function_nodes()
    if not wanted:
        return
    if not allow_archive_code:
        raise ConfigError(
            f"Workflow {contents.name} has function nodes ({', '.join(wanted)}): they are Python code "
            "from the archive, and this server does not run archive code (management args "
            "allow_archive_code: false)"
        )
    if contents.handler is None:
        raise BadInputError(
            f"Invalid workflow specification: nodes {', '.join(wanted)} are not models, so they are "
            "functions, and the archive has no handler file"
        )
    source = _text(contents.handler, "the handler file")
    try:
        tree = ast.parse(source, filename=contents.handler.name)
    except SyntaxError as exc:
        raise BadInputError(f"Workflow handler {contents.handler.name} is not valid Python: {exc}") from None
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    missing = [name for name in wanted if name not in defined]
    if missing:
        raise BadInputError(
            f"Invalid workflow specification: {', '.join(missing)} is neither a model of the spec nor a "
            f"function of {contents.handler.name}"
        )
