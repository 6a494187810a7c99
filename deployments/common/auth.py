"""Bearer tokens for the management API (and, if configured, inference).

``RAYTORCH_TOKEN`` wins; otherwise a token is generated on first start and kept in the state
directory's ``key_file.json`` (mode 0600), as TorchServe keeps its keys. Comparison is in
constant time.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

from deployments.common.state_files import atomic_write
from handlers.errors import UnauthorizedError

TOKEN_ENV = "RAYTORCH_TOKEN"
KEY_FILE = "key_file.json"


def load_or_create_token(state_dir: Path) -> str:
    """The management token: from the environment, the key file, or newly generated."""
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    key_file = state_dir / KEY_FILE
    if key_file.is_file():
        return str(json.loads(key_file.read_text(encoding="utf-8"))["management"]["key"])
    token = secrets.token_urlsafe(24)
    atomic_write(key_file, json.dumps({"management": {"key": token}}, indent=2), mode=0o600)
    return token


def check_bearer(header: str | None, token: str) -> None:
    """Raise 401 unless ``header`` is ``Bearer <token>``."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("Missing token: send 'Authorization: Bearer <token>' (see key_file.json).")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise UnauthorizedError("Invalid token.")
