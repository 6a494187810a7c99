"""``config.properties`` read as TorchServe's Java frontend reads it (``java.util.Properties``).

- one ``key=value``, ``key: value`` or ``key value`` per logical line; whitespace around the
  separator is dropped, the value keeps its trailing whitespace;
- lines whose first non-blank character is ``#`` or ``!`` are comments; blank lines are skipped;
- a line ending in an odd number of backslashes goes on in the next one (whose leading
  whitespace is dropped), which is how long ``models={...}`` values are written;
- ``\\t \\n \\r \\f``, ``\\uXXXX`` and ``\\<any>`` (e.g. ``\\=`` or ``\\:`` in a key) are escapes;
- a key given twice keeps its last value;
- then, as TorchServe's ConfigManager does, ``$$NAME$$`` in a value is replaced by the
  environment variable NAME (an unset one is an error naming it).

Standard library only, no Ray.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
SEPARATORS = "=: \t\f"
ENV_REFERENCE = re.compile(r"\$\$([^$]+[^$])\$\$")


class PropertiesError(ValueError):
    """A config.properties that cannot be read as TorchServe reads it."""


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(line number, logical line): continuations joined, comments and blank lines dropped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    result: list[tuple[int, str]] = []
    index = 0
    while index < len(lines):
        number, line = index + 1, lines[index].lstrip(" \t\f")
        index += 1
        if not line or line[0] in "#!":
            continue
        while _continues(line) and index < len(lines):
            line = line[:-1] + lines[index].lstrip(" \t\f")
            index += 1
        if _continues(line):  # a backslash on the file's last line is dropped, as Java does
            line = line[:-1]
        result.append((number, line))
    return result


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _unescape(text: str, number: int) -> str:
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char != "\\" or index + 1 == len(text):
            out.append(char)
            index += 1
            continue
        code = text[index + 1]
        if code == "u":
            digits = text[index + 2 : index + 6]
            if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                raise PropertiesError(f"line {number}: malformed \\uXXXX escape {text[index : index + 6]!r}")
            out.append(chr(int(digits, 16)))
            index += 6
            continue
        out.append(ESCAPES.get(code, code))
        index += 2
    return "".join(out)


def _split(line: str) -> tuple[str, str]:
    """The raw key and raw value of a logical line (escapes still in)."""
    index = 0
    while index < len(line):
        if line[index] == "\\":
            index += 2
            continue
        if line[index] in SEPARATORS:
            break
        index += 1
    key, rest = line[:index], line[index:]
    rest = rest.lstrip(" \t\f")
    if rest[:1] in ("=", ":"):
        rest = rest[1:].lstrip(" \t\f")
    return key, rest


def parse_properties(text: str) -> dict[str, str]:
    """The key/value pairs of a ``.properties`` text, in file order (last one wins)."""
    values: dict[str, str] = {}
    for number, line in _logical_lines(text):
        raw_key, raw_value = _split(line)
        values[_unescape(raw_key, number)] = _unescape(raw_value, number)
    return values


def resolve_env_references(
    values: dict[str, str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``$$NAME$$`` in each value replaced by the environment variable NAME (TorchServe's rule)."""
    environ = os.environ if environ is None else environ
    resolved = {}
    for key, value in values.items():

        def substitute(match: re.Match[str], key: str = key) -> str:
            name = match.group(1)
            if name not in environ:
                raise PropertiesError(f"{key}: the environment variable {name} it names is not set")
            return environ[name]

        resolved[key] = ENV_REFERENCE.sub(substitute, value)
    return resolved
