"""Readers of the state files earlier versions kept, for their one-time migration into the state
store (:mod:`deployments.management.state_store`): ``registry.json`` (dedicated versions and
their defaults), ``pooled.jsonl`` (a journal of pooled versions) and ``traffic.json`` (defaults
chosen with set-default, traffic policies).

A file that cannot be read (not JSON, wrong shape, nested too deep, unreadable from disk) is
logged, moved aside as ``<name>.bad-<UTC time>`` and skipped: the server starts without what it
held, as with any unusable state file. A bad entry costs only that entry (the file as it was is
kept beside it), a torn journal line only that line. No Ray here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from deployments.common.routing import TrafficPolicy
from deployments.common.settings import ModelAppArgs
from deployments.common.state_files import move_aside
from deployments.management.state_records import PooledVersion, Record, VersionRecord
from handlers.errors import validation_message

logger = logging.getLogger("ray.serve")
REGISTRY, POOLED, TRAFFIC = "registry.json", "pooled.jsonl", "traffic.json"
LEGACY_FILES = (REGISTRY, POOLED, TRAFFIC)
# Reading a file can fail in these ways besides a bad shape: a document nested deeper than the
# parser's recursion limit, a disk error.
UNREADABLE = (OSError, ValueError, TypeError, AttributeError, KeyError, RecursionError)


@dataclass
class LegacyState:
    """What the old files held: versions (model, record), defaults and policies by model."""

    versions: list[tuple[str, Record]] = field(default_factory=list)
    defaults: dict[str, str] = field(default_factory=dict)
    policies: dict[str, TrafficPolicy] = field(default_factory=dict)


def read_legacy(state_dir: Path, names: tuple[str, ...] = LEGACY_FILES) -> LegacyState:
    """Everything the old files in ``state_dir`` (those of ``names`` that exist) hold, merged
    with the rule the old server routed by: a set-default choice, else the default of whichever
    file registered the model first."""
    state = LegacyState()
    registry = _read_registry(state_dir / REGISTRY) if REGISTRY in names else {}
    pooled = _read_journal(state_dir / POOLED) if POOLED in names else {}
    explicit, state.policies = _read_traffic(state_dir / TRAFFIC) if TRAFFIC in names else ({}, {})
    for source in (registry, pooled):
        for model, (versions, _) in source.items():
            state.versions.extend((model, record) for record in versions.values())
    for model in set(registry) | set(pooled) | set(explicit):
        candidates = [
            (versions[default].registered_at, default)
            for versions, default in (registry.get(model, ({}, "")), pooled.get(model, ({}, "")))
            if default in versions
        ]
        chosen = explicit.get(model) or (min(candidates)[1] if candidates else None)
        if chosen is not None:
            state.defaults[model] = chosen
    return state


def _unreadable(path: Path, exc: BaseException) -> None:
    aside = move_aside(path)
    logger.error(
        "The state file %s cannot be read (%s): moved it to %s and started without it; what it "
        "held was not restored. Fix the file and move it back while the server is stopped.",
        path, str(exc)[:200] or type(exc).__name__, aside,
    )  # fmt: skip


def _read_registry(path: Path) -> dict[str, tuple[dict[str, Record], str]]:
    """registry.json: model -> (versions, default); each version read on its own."""
    if not path.is_file():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(document, dict) or not isinstance(document.get("models", {}), dict):
            raise ValueError("it is not a JSON object with a 'models' object")
    except UNREADABLE as exc:
        _unreadable(path, exc)
        return {}
    models, bad = {}, []
    for name, raw in (document.get("models") or {}).items():
        versions = raw.get("versions") if isinstance(raw, dict) else None
        if not isinstance(versions, dict):
            bad.append(f"{name} (not a model record)")
            continue
        good: dict[str, Record] = {}
        for version, entry in versions.items():
            try:
                record = VersionRecord.model_validate(entry)
                ModelAppArgs.model_validate(record.args)  # describe and restore need them
                good[str(version)] = record
            except ValidationError as exc:
                bad.append(f"{name} {version} ({validation_message(exc.errors())[:200]})")
        if good:
            default = raw.get("default_version")
            if default not in good:
                default = max(good, key=lambda v: good[v].registered_at)
            models[str(name)] = (good, str(default))
    if bad:
        aside = move_aside(path, copy=True)
        logger.error(
            "The registry %s has entries that cannot be read, left out: %s. The file as it was is "
            "kept in %s.",
            path, "; ".join(bad), aside,
        )  # fmt: skip
    return models


def _read_journal(path: Path) -> dict[str, tuple[dict[str, Record], str]]:
    """pooled.jsonl, replayed: model -> (versions, default); a bad line is skipped."""
    if not path.is_file():
        return {}
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        _unreadable(path, exc)
        return {}
    models: dict[str, dict[str, Record]] = {}
    defaults: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                _replay(json.loads(line), models, defaults)
            except (*UNREADABLE, ValidationError) as exc:
                logger.warning("Skipping unreadable line %d of %s: %s", number, path, exc)
    return {model: (versions, defaults[model]) for model, versions in models.items()}


def _replay(change: dict[str, Any], models: dict[str, dict[str, Record]], defaults: dict[str, str]) -> None:
    """One journal line: the first version is the default, then the latest registered one."""
    model = change["model"]
    if change["op"] == "add":
        record = PooledVersion.model_validate(change["record"])
        models.setdefault(model, {})[record.version] = record
        defaults.setdefault(model, record.version)
    elif change["op"] == "remove":
        versions = models.get(model, {})
        versions.pop(change["version"], None)
        if not versions:
            models.pop(model, None)
            defaults.pop(model, None)
        elif defaults.get(model) == change["version"]:
            defaults[model] = max(versions.values(), key=lambda r: r.registered_at).version
    else:
        raise ValueError(f"unknown operation {change['op']!r}")


def _read_traffic(path: Path) -> tuple[dict[str, str], dict[str, TrafficPolicy]]:
    """traffic.json: (set-default choices, traffic policies) by model."""
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        defaults = {str(k): str(v) for k, v in (data.get("defaults") or {}).items()}
        policies = {str(k): TrafficPolicy.from_dict(v) for k, v in (data.get("policies") or {}).items()}
    except UNREADABLE as exc:
        _unreadable(path, exc)
        return {}, {}
    return defaults, policies
