"""Text requests and vocabularies: decode one request body, turn words into token ids.

A request is either plain UTF-8 text (``text/plain``, or no/binary/form content type as
``curl --data-binary`` sends) or JSON ``{"text": "..."}``. A vocabulary file is either one token
per line (line number = token id, first line 0) or a JSON object ``{"token": id}``.
Token id 0 is padding: it must be ``<pad>`` or unused. ``<unk>`` is required; words not in
the vocabulary map to it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from handlers.errors import BadInputError, ModelLoadError, PayloadTooLargeError, UnsupportedMediaTypeError

PAD, UNK = "<pad>", "<unk>"
PAD_ID = 0
WORD = re.compile(r"\w+")

# Declared types read as raw text: curl's defaults for --data-binary / -T, and any text/*.
_RAW_TEXT_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")
_UTF8_CHARSETS = ("utf-8", "utf8", "us-ascii", "ascii")
# A JSON string escape spends at most 12 bytes on one character (a \\uXXXX surrogate pair).
_JSON_BYTES_PER_CHAR = 12


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    if not content_type:
        return "", None
    media, *params = (part.strip().lower() for part in content_type.split(";"))
    charset = next((p.partition("=")[2].strip('"') for p in params if p.startswith("charset=")), None)
    return media, charset


def read_text(data: bytes, content_type: str | None, max_chars: int) -> str:
    """The text of one request; 400 when unusable, 413 over ``max_chars``, 415 for other types."""
    media, charset = _media_type(content_type)
    is_json = media == "application/json" or media.endswith("+json")
    if not (is_json or not media or media.startswith("text/") or media in _RAW_TEXT_TYPES):
        raise UnsupportedMediaTypeError(
            f'Content type {media!r} is not text: send UTF-8 text (text/plain) or JSON {{"text": ...}}.'
        )
    if charset and charset not in _UTF8_CHARSETS:
        raise UnsupportedMediaTypeError(f"Charset {charset!r} is not supported: send UTF-8 text.")
    # Refuse oversized bodies before decoding them (a UTF-8 character takes at most 4 bytes).
    if len(data) > max_chars * (_JSON_BYTES_PER_CHAR if is_json else 4) + 64:
        raise PayloadTooLargeError(
            f"Text body of {len(data)} bytes is over the limit of {max_chars} characters."
        )
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInputError(f"Request body is not valid UTF-8 text: {exc}") from None
    text = _json_text(decoded) if is_json else decoded
    if not text.strip():
        raise BadInputError('Empty text: send the text to classify, e.g. curl -d "great movie" ...')
    if len(text) > max_chars:
        raise PayloadTooLargeError(f"Text of {len(text)} characters is over the limit of {max_chars}.")
    return text


def _json_text(decoded: str) -> str:
    try:
        payload = json.loads(decoded)
    except ValueError as exc:
        raise BadInputError(f"Request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadInputError("Request body is JSON nested too deeply") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
        raise BadInputError('JSON body must be an object with a string field "text", e.g. {"text": "..."}.')
    return payload["text"]


class Vocabulary:
    """Token -> id lookup with the tokenizer the text classifier uses.

    Tokens are the regex ``\\w+`` words of the text (lowercased when ``lowercase``).
    """

    def __init__(self, ids: dict[str, int], lowercase: bool = True) -> None:
        if UNK not in ids:
            raise ModelLoadError(f"Vocabulary has no {UNK!r} token (unknown words need an id).")
        squatter = next((t for t, i in ids.items() if i == PAD_ID and t != PAD), None)
        if squatter is not None:
            raise ModelLoadError(
                f"Vocabulary gives id {PAD_ID} to {squatter!r}; id 0 is reserved for {PAD!r}."
            )
        self.ids = ids
        self.unk_id = ids[UNK]
        self.lowercase = lowercase

    def __len__(self) -> int:
        return max(self.ids.values()) + 1

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids of the first ``max_length`` words of ``text``."""
        if self.lowercase:
            text = text.lower()
        words = WORD.findall(text)[:max_length]
        return [self.ids.get(word, self.unk_id) for word in words]


def read_vocabulary(path: Path) -> dict[str, int]:
    """Read a vocabulary file: JSON ``{token: id}`` (a ``.json`` file) or one token per line."""
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"Cannot read vocabulary {path}: {exc}") from exc
    if path.suffix == ".json":
        try:
            raw = json.loads(content)
        except ValueError as exc:
            raise ModelLoadError(f"Vocabulary {path} is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in raw.values()
        ):
            raise ModelLoadError(f"Vocabulary {path} must be a JSON object of token -> non-negative id.")
        return raw
    ids: dict[str, int] = {}
    for number, line in enumerate(content.splitlines()):
        token = line.strip()
        if not token:
            continue  # a blank line keeps its id unused
        if token in ids:
            raise ModelLoadError(
                f"Vocabulary {path}: token {token!r} on lines {ids[token] + 1} and {number + 1}"
            )
        ids[token] = number
    return ids
