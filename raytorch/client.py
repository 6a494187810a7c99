"""A small HTTP client for the inference and management APIs (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployments.common.environment import Environment

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """An error answer from the server, with its JSON body."""

    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message", body) if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.body = body


def find_token(explicit: str | None, state_dir: str | None) -> str | None:
    """Token from the flag, RAYTORCH_TOKEN, or the server's key_file.json."""
    if explicit:
        return explicit
    env = Environment()
    if env.token:
        return env.token
    key_file = Path(state_dir or env.state_dir or ".raytorch") / "key_file.json"
    if key_file.is_file():
        return str(json.loads(key_file.read_text())["management"]["key"])
    return None


@dataclass
class Client:
    """Calls one raytorch server."""

    base_url: str = DEFAULT_URL
    token: str | None = None
    timeout_s: float = 120.0

    def request(
        self, method: str, path: str, params: dict | None = None, body: bytes | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """Send a request; return (status, decoded JSON, headers) or raise ApiError."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        url = self.base_url.rstrip("/") + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, data=body, method=method)
        if self.token:
            # Unredirected: a redirect (to another host, or a plain-http one) never gets the token.
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, json.loads(response.read() or b"null"), dict(response.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(exc.code, payload) from None

    def predict(self, model: str, data: bytes, version: str | None = None) -> Any:
        """POST one input to /predictions/{model}[/{version}]."""
        path = f"/predictions/{urllib.parse.quote(model)}" + (
            f"/{urllib.parse.quote(version)}" if version else ""
        )
        return self.request("POST", path, body=data)[1]
