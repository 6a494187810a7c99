"""The management part's state in one SQLite database, ``state.db`` in the state directory:
what is registered (dedicated and pooled versions), each model's default version and its
traffic policy. Its schema, and the statements each change runs, are in
:mod:`deployments.management.state_schema`.

Every change (register, scale, set-default, a traffic policy, unregister) is one transaction:
a crash leaves the last committed state, never half a change (WAL journal; ``synchronous=FULL``,
so a change is on disk before it returns). Writes run on a worker thread, never on the event
loop; the database is read once at start into memory, so reads cost no I/O. After each
committed change the subscribers (:meth:`StateStore.subscribe`) are called with the models it
touched: the routing feed announces them to the ingresses.

Defaults: a model's first registered version is its default until set-default picks another
(any version, also one from the config file); when the default is unregistered, the most
recently registered version that is left takes over.

The files of earlier versions (``registry.json``, ``pooled.jsonl``, ``traffic.json``) are
migrated on first start (:mod:`deployments.management.legacy_state`) and renamed ``*.migrated``.
A database that cannot be opened, or rows that no longer read, are logged and kept aside
(``state.db.bad-<UTC time>``); the server starts with what could be read. No Ray here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from deployments.common.routing import TrafficPolicy
from deployments.common.state_files import aside_path, move_aside
from deployments.management import state_schema as schema
from deployments.management.legacy_state import LEGACY_FILES, read_legacy
from deployments.management.state_records import PooledVersion, Record, VersionRecord
from handlers.errors import ConflictError, validation_message

logger = logging.getLogger("ray.serve")
Subscriber = Callable[[list[str]], None]
POLICY = "(traffic policy)"  # what a bad policy row is called in the log


class StateStore:
    """Registered versions, defaults and traffic policies; see the module docstring.

    Reads are synchronous (memory); writes are coroutines, one transaction each, serialized.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / schema.FILE_NAME
        self._versions: dict[str, dict[str, Record]] = {}
        self._defaults: dict[str, str] = {}
        self._policies: dict[str, TrafficPolicy] = {}
        self._by_id: dict[str, tuple[str, PooledVersion]] = {}
        self._subscribers: list[Subscriber] = []
        self._thread_lock = threading.Lock()  # one connection, used by one thread at a time
        self._write_lock: asyncio.Lock | None = None
        state_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(state_dir)
        except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
            opened = getattr(self, "_db", None)
            if opened is not None:
                opened.close()
            self._versions, self._defaults, self._policies, self._by_id = {}, {}, {}, {}
            aside = move_aside(self.path)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            logger.error(
                "The state database %s cannot be read (%s): moved it to %s and started with an "
                "empty one; registered models were not restored.",
                self.path, exc, aside,
            )  # fmt: skip
            self._start(state_dir)

    def _start(self, state_dir: Path) -> None:
        self._db: sqlite3.Connection = self._open()
        self._migrate(state_dir)
        self._load()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(schema.SCHEMA)
            db.execute(f"PRAGMA user_version={schema.SCHEMA_VERSION}")
            db.execute("SELECT count(*) FROM versions").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    # -- reads (memory) ------------------------------------------------------------------------
    def versions(self, model: str) -> dict[str, Record]:
        """The registered versions of ``model``, dedicated and pooled (empty when none)."""
        return self._versions.get(model, {})

    def dedicated(self, model: str) -> dict[str, VersionRecord]:
        """The versions of ``model`` registered as their own application."""
        return {v: r for v, r in self.versions(model).items() if isinstance(r, VersionRecord)}

    def pooled(self, model: str) -> dict[str, PooledVersion]:
        """The versions of ``model`` registered into a pool."""
        return {v: r for v, r in self.versions(model).items() if isinstance(r, PooledVersion)}

    def by_model_id(self, model_id: str) -> tuple[str, PooledVersion] | None:
        """(model, record) of a pooled registration's multiplexed model id, or None."""
        return self._by_id.get(model_id)

    def registered(self) -> list[tuple[str, Record]]:
        """Every registered version as (model, record), oldest first."""
        found = [(m, r) for m, versions in self._versions.items() for r in versions.values()]
        return sorted(found, key=lambda item: item[1].registered_at)

    def default(self, model: str) -> str | None:
        """The model's default version (None: none registered nor chosen)."""
        return self._defaults.get(model)

    def defaults(self) -> dict[str, str]:
        """Model -> default version, for every model that has one."""
        return dict(self._defaults)

    def policy(self, model: str) -> TrafficPolicy | None:
        """The model's traffic policy (None: requests go to the default)."""
        return self._policies.get(model)

    def models(self) -> set[str]:
        """Every model name the store knows something about."""
        return set(self._versions) | set(self._defaults) | set(self._policies)

    # -- changes (one transaction each, off the event loop) ------------------------------------
    def subscribe(self, subscriber: Subscriber) -> None:
        """Call ``subscriber(models)`` after every committed change, with the models it touched."""
        self._subscribers.append(subscriber)

    async def add(self, model: str, record: Record) -> None:
        """Register a version (409 when the model has it); the first version is the default."""

        def change(db: sqlite3.Connection) -> None:
            try:
                schema.add(db, model, record)
            except sqlite3.IntegrityError:
                raise ConflictError(
                    f"Model version {record.version} is already registered for model {model}"
                ) from None

        await self._change([model], change)

    async def update(self, model: str, record: VersionRecord) -> None:
        """Replace a registered version's record (after scaling)."""
        await self._change([model], lambda db: schema.update(db, model, record))

    async def remove(self, model: str, version: str, routing: bool = True) -> None:
        """Forget ``version``: its registration, and (``routing``) its place as the default
        (the latest registered version left takes over) and in the traffic policy. Without
        ``routing`` only the registration goes: the version still runs (from the config)."""
        await self._change([model], lambda db: schema.forget(db, model, version, routing))

    async def set_default(self, model: str, version: str) -> None:
        """Make ``version`` the default. A split ends (everything goes to the new default); a
        shadow of another version stays."""

        await self._change([model], lambda db: schema.set_default(db, model, version))

    async def set_policy(self, model: str, policy: TrafficPolicy | None) -> None:
        """Replace the model's traffic policy (None: requests go to the default again)."""
        await self._change([model], lambda db: schema.set_policy(db, model, policy))

    async def _change(self, models: list[str], change: Callable[[sqlite3.Connection], object]) -> None:
        if self._write_lock is None:
            self._write_lock = asyncio.Lock()
        async with self._write_lock:  # the memory copy follows the commits in their order
            rows = await asyncio.to_thread(self._transaction, models, change)
            self._apply(models, rows)
        for subscriber in self._subscribers:
            subscriber(models)

    def _transaction(
        self, models: list[str], change: Callable[[sqlite3.Connection], object]
    ) -> dict[str, tuple]:
        """Run ``change`` in one transaction; returns the touched models' rows as committed."""
        with self._thread_lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                change(db)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return {model: schema.rows(db, model) for model in models}

    def _apply(self, models: Iterable[str], rows: dict[str, tuple]) -> None:
        for model in models:
            versions, default, policy = rows[model]
            for record in self._versions.pop(model, {}).values():
                if isinstance(record, PooledVersion):
                    self._by_id.pop(record.model_id, None)
            self._defaults.pop(model, None)
            self._policies.pop(model, None)
            for _, pool, text in versions:
                self._remember(model, schema.parse(pool, text))
            if default is not None:
                self._defaults[model] = default
            if policy is not None:
                self._policies[model] = policy

    def _remember(self, model: str, record: Record) -> None:
        self._versions.setdefault(model, {})[record.version] = record
        if isinstance(record, PooledVersion):
            self._by_id[record.model_id] = (model, record)

    # -- start ---------------------------------------------------------------------------------
    def _migrate(self, state_dir: Path) -> None:
        """Move the old files' contents in (one transaction), then rename them ``*.migrated``.
        A file whose contents are in already (a crash before the rename) is only renamed."""
        present = [name for name in LEGACY_FILES if (state_dir / name).is_file()]
        if not present:
            return
        done = {row[0] for row in self._db.execute("SELECT file FROM migrated")}
        todo = tuple(name for name in present if name not in done)
        if todo:
            legacy = read_legacy(state_dir, todo)

            def move_in(db: sqlite3.Connection) -> None:
                for model, record in legacy.versions:
                    schema.insert(db, model, record, replace=True)
                db.executemany("INSERT OR REPLACE INTO defaults VALUES (?, ?)", legacy.defaults.items())
                for model, policy in legacy.policies.items():
                    schema.set_policy(db, model, policy)
                db.executemany("INSERT INTO migrated VALUES (?, ?)", [(name, time.time()) for name in todo])

            self._transaction([], move_in)
            logger.info(
                "Migrated %s into %s: %d registered versions, %d defaults, %d traffic policies",
                ", ".join(todo), self.path, len(legacy.versions), len(legacy.defaults), len(legacy.policies),
            )  # fmt: skip
        for name in present:
            if (state_dir / name).is_file():  # a file that could not be read was moved aside
                (state_dir / name).replace(state_dir / f"{name}.migrated")

    def _load(self) -> None:
        """Read everything into memory; rows that no longer read are kept aside and dropped."""
        bad: list[tuple[str, str, str]] = []
        rows = self._db.execute("SELECT model, version, pool, record FROM versions ORDER BY registered_at")
        for model, version, pool, text in rows.fetchall():
            try:
                self._remember(model, schema.parse(pool, text))
            except ValidationError as exc:
                bad.append((model, version, validation_message(exc.errors())[:200]))
        self._defaults = dict(self._db.execute("SELECT model, version FROM defaults").fetchall())
        for model, text in self._db.execute("SELECT model, policy FROM policies").fetchall():
            try:
                self._policies[model] = TrafficPolicy.from_dict(json.loads(text))
            except (ValueError, TypeError, AttributeError) as exc:
                bad.append((model, POLICY, str(exc)[:200]))
        if bad:
            self._drop(bad)

    def _drop(self, bad: list[tuple[str, str, str]]) -> None:
        aside = aside_path(self.path)
        copy = sqlite3.connect(aside)
        try:
            self._db.backup(copy)  # the WAL's changes included, unlike a copy of the file
        finally:
            copy.close()

        def drop(db: sqlite3.Connection) -> None:
            for model, version, _ in bad:
                if version == POLICY:
                    db.execute("DELETE FROM policies WHERE model = ?", (model,))
                else:
                    schema.forget(db, model, version, routing=True)

        models = sorted({model for model, _, _ in bad})
        self._apply(models, self._transaction(models, drop))
        logger.error(
            "The state database %s has entries that cannot be read, left out: %s. The database as "
            "it was is kept in %s.",
            self.path, "; ".join(f"{m} {v} ({why})" for m, v, why in bad), aside,
        )  # fmt: skip
