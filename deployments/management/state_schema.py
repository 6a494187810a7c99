"""The state store's schema (:data:`SCHEMA`, in ``<state_dir>/state.db``) and the statements
each change runs on it, inside the transaction :class:`~deployments.management.state_store.StateStore`
opens. No Ray here.

``versions``: one row per registered version, dedicated (``pool`` NULL) or pooled, its record
as JSON (:mod:`deployments.management.state_records`). ``defaults``: each model's default
version (also one from the config file, chosen with set-default). ``policies``: traffic
policies as JSON. ``migrated``: the files of earlier versions already taken in.
"""

from __future__ import annotations

import json
import sqlite3

from deployments.common.routing import TrafficPolicy
from deployments.common.settings import ModelAppArgs
from deployments.management.state_records import PooledVersion, Record, VersionRecord

FILE_NAME = "state.db"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    pool TEXT,                       -- NULL: a dedicated Serve application
    record TEXT NOT NULL,            -- VersionRecord (dedicated) or PooledVersion as JSON
    registered_at REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS defaults (model TEXT PRIMARY KEY, version TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (model TEXT PRIMARY KEY, policy TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS migrated (file TEXT PRIMARY KEY, at REAL NOT NULL);
"""


def parse(pool: str | None, text: str) -> Record:
    """A ``versions`` row's record (pydantic's ValidationError when it no longer reads)."""
    if pool is None:
        record = VersionRecord.model_validate_json(text)
        ModelAppArgs.model_validate(record.args)  # describe and restore need them
        return record
    return PooledVersion.model_validate_json(text)


def insert(db: sqlite3.Connection, model: str, record: Record, replace: bool = False) -> None:
    """Add a version's row (``replace``: over one of the same model and version)."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    pool = record.pool if isinstance(record, PooledVersion) else None
    db.execute(
        f"{verb} INTO versions VALUES (?, ?, ?, ?, ?)",
        (model, record.version, pool, record.model_dump_json(), record.registered_at),
    )


def add(db: sqlite3.Connection, model: str, record: Record) -> None:
    """Register a version (sqlite3.IntegrityError when the model has it); the model's first
    version becomes its default."""
    insert(db, model, record)
    db.execute("INSERT OR IGNORE INTO defaults VALUES (?, ?)", (model, record.version))


def update(db: sqlite3.Connection, model: str, record: Record) -> None:
    """Replace a registered version's record."""
    db.execute(
        "UPDATE versions SET record = ? WHERE model = ? AND version = ?",
        (record.model_dump_json(), model, record.version),
    )


def set_default(db: sqlite3.Connection, model: str, version: str) -> None:
    """Make ``version`` the default; a split ends, a shadow of another version stays."""
    db.execute("INSERT OR REPLACE INTO defaults VALUES (?, ?)", (model, version))
    current = policy(db, model)
    if current is not None:
        kept = TrafficPolicy((), current.shadow, current.shadow_percent)
        set_policy(db, model, kept if current.shadow not in (None, version) else None)


def rows(db: sqlite3.Connection, model: str) -> tuple:
    """(versions [(version, pool, record)], default, policy) of ``model`` as stored."""
    versions = db.execute(
        "SELECT version, pool, record FROM versions WHERE model = ? ORDER BY registered_at", (model,)
    ).fetchall()
    default = db.execute("SELECT version FROM defaults WHERE model = ?", (model,)).fetchone()
    return versions, default[0] if default else None, policy(db, model)


def policy(db: sqlite3.Connection, model: str) -> TrafficPolicy | None:
    """The model's stored traffic policy (None: none)."""
    row = db.execute("SELECT policy FROM policies WHERE model = ?", (model,)).fetchone()
    return TrafficPolicy.from_dict(json.loads(row[0])) if row else None


def set_policy(db: sqlite3.Connection, model: str, new: TrafficPolicy | None) -> None:
    """Store (None: remove) the model's traffic policy."""
    if new is None:
        db.execute("DELETE FROM policies WHERE model = ?", (model,))
    else:
        db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?)", (model, json.dumps(new.to_dict())))


def forget(db: sqlite3.Connection, model: str, version: str, routing: bool) -> None:
    """Remove a version's row and (``routing``) its place as the default (the latest
    registered version left takes over) and in the traffic policy."""
    db.execute("DELETE FROM versions WHERE model = ? AND version = ?", (model, version))
    if not routing:
        return
    default = db.execute("SELECT version FROM defaults WHERE model = ?", (model,)).fetchone()
    if default is not None and default[0] == version:
        latest = db.execute(
            "SELECT version FROM versions WHERE model = ? ORDER BY registered_at DESC LIMIT 1", (model,)
        ).fetchone()
        if latest is None:
            db.execute("DELETE FROM defaults WHERE model = ?", (model,))
        else:
            db.execute("UPDATE defaults SET version = ? WHERE model = ?", (latest[0], model))
    current = policy(db, model)
    if current is not None and (version == current.shadow or version in dict(current.split)):
        set_policy(db, model, current.without(version))
