"""Requests as TorchServe's clients send them, made ready for the management API's routes.

TorchServe splits the path on ``/`` (a trailing slash changes nothing), reads an empty query
value as "not given", and parses JSON bodies leniently (Gson accepts single-quoted strings,
which its own tests send). These helpers give the FastAPI app the same tolerance, without
loosening any check on what the values mean.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
from typing import Any
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel

from handlers.errors import BadInputError

# An empty `url=` still names an archive (none): TorchServe answers 404 for it, not "required".
KEPT_WHEN_EMPTY = frozenset({"url"})


class TorchServeRequestShape:
    """ASGI middleware: ``/models`` and ``/models/x/`` mean ``/models/`` and ``/models/x``
    (Starlette would answer a redirect, which curl does not follow for POST or DELETE), and
    ``limit=&next_page_token=`` means neither was given."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            root = scope.get("root_path", "")
            path = scope["path"]
            relative = path[len(root) :] if root and path.startswith(root) else path
            relative = "/" + relative.strip("/") if relative.strip("/") else "/"
            query = scope.get("query_string", b"")
            if query:
                pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
                kept = [(k, v) for k, v in pairs if v or k in KEPT_WHEN_EMPTY]
                if len(kept) < len(pairs):
                    query = urlencode(kept).encode()
            scope = {
                **scope,
                "path": root + relative,
                "raw_path": (root + relative).encode(),
                "query_string": query,
            }
        await self.app(scope, receive, send)


def json_object(body: bytes) -> dict[str, Any]:
    """A JSON object body: strict JSON, or JSON with single-quoted strings as Gson (TorchServe's
    parser) accepts. 400 for anything else."""
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
        value = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError is one too
        try:
            value = json.loads(_double_quoted(body.decode("utf-8")))
        except (ValueError, SyntaxError, tokenize.TokenError):
            raise BadInputError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInputError("The request body must be a JSON object of registration parameters")
    return value


def _double_quoted(text: str) -> str:
    """Rewrite Python-style string tokens (``'url'``) as JSON strings; other tokens unchanged."""
    tokens = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.STRING:
            value = ast.literal_eval(token.string)
            if not isinstance(value, str):
                raise ValueError(f"unsupported literal {token.string[:20]}")
            token = token._replace(string=json.dumps(value))
        tokens.append(token)
    return tokenize.untokenize(tokens)


def query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters documenting ``model``'s fields (for routes that parse the
    query themselves)."""
    parameters = []
    for name, info in model.model_fields.items():
        annotation = str(info.annotation)
        kind = "integer" if "int" in annotation else "number" if "float" in annotation else "string"
        kind = "boolean" if "bool" in annotation else kind
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": {"type": kind},
                **({"description": info.description} if info.description else {}),
            }
        )
    return parameters
