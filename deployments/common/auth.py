"""Bearer tokens for the management API (and, if configured, inference).

``RAYTORCH_TOKEN`` wins; otherwise a token is generated on first start and kept in the state
directory's ``key_file.json`` (mode 0600), as TorchServe keeps its keys. Comparison is in
constant time.

The token lets its holder run code on every node (registering a model is running its code),
so a guessable one is refused: ``RAYTORCH_TOKEN`` must have at least
:data:`MIN_TOKEN_LENGTH` characters, or the server does not start and says why. A key file
others may read is made private again, with a warning to replace the key; a key file that
cannot be read is moved aside and a new key written, so /models never stays down for it.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

from deployments.common.environment import Environment
from deployments.common.state_files import atomic_write, move_aside
from handlers.errors import ConfigError, UnauthorizedError

TOKEN_ENV = "RAYTORCH_TOKEN"
KEY_FILE = "key_file.json"
MIN_TOKEN_LENGTH = 16
logger = logging.getLogger("ray.serve")


def check_token_strength(token: str, origin: str) -> None:
    """Refuse a token short enough to guess (ConfigError naming where it came from)."""
    if len(token) < MIN_TOKEN_LENGTH or len(set(token)) < 4:
        raise ConfigError(
            f"{origin} is too weak ({len(token)} characters): use at least {MIN_TOKEN_LENGTH} "
            "random characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )


def token_from_env() -> str | None:
    """``RAYTORCH_TOKEN`` when set (checked for strength), else None."""
    token = (Environment().token or "").strip()
    if not token:
        return None
    check_token_strength(token, f"The {TOKEN_ENV} environment variable")
    return token


def _read_key_file(key_file: Path) -> str | None:
    """The key in ``key_file``, or None when the file is unusable (moved aside, logged)."""
    try:
        token = json.loads(key_file.read_text(encoding="utf-8"))["management"]["key"]
        if not isinstance(token, str):
            raise TypeError("the key is not a string")
        check_token_strength(token, "The key")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, ConfigError) as exc:
        aside = move_aside(key_file)
        reason = exc.message if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
        logger.error(
            "The key file %s cannot be used (%s): moved it to %s and wrote a new key. Clients "
            "must use the new key from %s.", key_file, reason[:200], aside, key_file,
        )  # fmt: skip
        return None
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        os.chmod(key_file, 0o600)
        logger.warning(
            "The key file %s was readable by others (mode %o): made it private (0600). Anyone "
            "who read it holds the key: delete the file and restart to get a new key.",
            key_file, mode,
        )  # fmt: skip
    return token


def load_or_create_token(state_dir: Path) -> str:
    """The management token: from the environment, the key file, or newly generated."""
    from_env = token_from_env()
    if from_env:
        return from_env
    key_file = state_dir / KEY_FILE
    if key_file.exists():
        token = _read_key_file(key_file)
        if token is not None:
            return token
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


async def may_see_details(authorize: Callable[[str | None], Awaitable[None]], header: str | None) -> bool:
    """Whether a health answer may name models and why they fail (reasons can hold file paths):
    always without inference auth (``authorize`` never raises then); with it, only for a caller
    whose ``Authorization`` header holds the token. Probes without it still get the status."""
    try:
        await authorize(header)
    except Exception:  # no token, a wrong one, or no way to check it now: say less
        return False
    return True


def header_check(token: str | Callable[[str | None], None]) -> Callable[[str | None], None]:
    """A check of an ``Authorization`` header that raises UnauthorizedError: ``token`` itself
    when it is a function (e.g. TorchServe's management key), else the bearer ``token``."""
    if callable(token):
        return token
    return lambda header: check_bearer(header, token)
