"""TorchServe 0.12's token authorization: three keys in ``key_file.json``, shared through that file.

Layout (TorchServe's own, so its clients and scripts read it unchanged)::

    {"management": {"key": "...", "expiration time": "2026-12-07T16:12:24.801167Z"},
     "inference":  {"key": "...", "expiration time": "..."},
     "API":        {"key": "..."}}

- the management key opens the management API (``/models``), the inference key the inference
  API; each expires ``token_expiration_min`` minutes (TorchServe: 60) after it was made;
- the API key, which never expires, opens the token API: ``GET /token?type=management|inference``
  on the management listener makes a new key of that type (and a new expiry).

The file is the one shared truth: ``raytorch torchserve`` writes it at start, whichever process
answers ``/token`` rewrites it atomically, and every process that checks keys re-reads it when
its modification stamp changes (one ``stat`` per check), so a regenerated key is refused by
every ingress replica and the management API at once. No Ray import here.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from deployments.common.state_files import atomic_write
from handlers.errors import BadInputError, UnauthorizedError

KeyType = Literal["management", "inference", "API"]
REGENERATED_TYPES = ("management", "inference")
DEFAULT_EXPIRATION_MIN = 60.0  # TorchServe's token_expiration_min default
# TorchServe's sentence (it answers 400 with it; we answer 401, docs/torchserve-compatibility.md).
REFUSED = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


def new_key() -> str:
    """A random key (32 URL-safe characters; TorchServe's are 8)."""
    return secrets.token_urlsafe(24)


def _stamp(expiration_min: float) -> str:
    moment = datetime.now(timezone.utc) + timedelta(minutes=expiration_min)
    return moment.isoformat().replace("+00:00", "Z")


def _parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def write_new_key_file(path: Path, expiration_min: float = DEFAULT_EXPIRATION_MIN) -> dict:
    """Write a key file with three new keys (mode 0600); returns its content."""
    content = {
        "management": {"key": new_key(), "expiration time": _stamp(expiration_min)},
        "inference": {"key": new_key(), "expiration time": _stamp(expiration_min)},
        "API": {"key": new_key()},
    }
    atomic_write(path, json.dumps(content, indent=2), mode=0o600)
    return content


@dataclass
class _Snapshot:
    stamp: tuple[int, int, int]
    content: dict


class KeyFile:
    """Checks bearer keys against a TorchServe key file, re-read whenever it changes."""

    def __init__(self, path: str | os.PathLike, expiration_min: float = DEFAULT_EXPIRATION_MIN) -> None:
        self.path = Path(path)
        self.expiration_min = expiration_min
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()

    def content(self) -> dict:
        """The file's keys as they are now (re-read when its stamp changed)."""
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise UnauthorizedError(f"{REFUSED} (the key file {self.path} is gone)") from None
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        snapshot = self._snapshot
        if snapshot is None or snapshot.stamp != stamp:
            snapshot = _Snapshot(stamp, json.loads(self.path.read_text(encoding="utf-8")))
            self._snapshot = snapshot
        return snapshot.content

    def check(self, header: str | None, kind: KeyType) -> None:
        """Raise 401 unless ``header`` is ``Bearer <the current, unexpired key of kind>``."""
        scheme, _, given = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise UnauthorizedError(f"{REFUSED}: send 'Authorization: Bearer <{kind} key of key_file.json>'")
        entry = self.content().get(kind) or {}
        key = str(entry.get("key", ""))
        if not key or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise UnauthorizedError(REFUSED)
        expires = entry.get("expiration time")
        if expires and _parse_stamp(str(expires)) <= datetime.now(timezone.utc):
            raise UnauthorizedError(
                f"{REFUSED}: the {kind} key expired at {expires}; make a new one with "
                f"/token?type={kind} (the API key of key_file.json)"
            )

    def regenerate(self, kind: str) -> dict:
        """A new ``management`` or ``inference`` key with a new expiry, written to the file;
        400 for any other type."""
        if kind not in REGENERATED_TYPES:
            raise BadInputError(f"Invalid token type {kind[:40]!r}: use type=management or type=inference")
        with self._lock:
            content = json.loads(json.dumps(self.content()))
            content[kind] = {"key": new_key(), "expiration time": _stamp(self.expiration_min)}
            atomic_write(self.path, json.dumps(content, indent=2), mode=0o600)
            self._snapshot = None
        return content
