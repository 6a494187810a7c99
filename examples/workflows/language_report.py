"""The function nodes of the ``language_report`` workflow in configs/workflow.yaml.

Written as TorchServe's workflow handler files are: each function takes ``(data, context)``,
``data`` being a list with one request dict, and answers a list with one item. A node with one
parent gets that parent's output as ``body`` (bytes); a node with several gets each parent's
output under the parent's name. Each function is also called once with ``data=None`` when the
workflow starts (TorchServe does the same), so each returns early then.
"""

import json


def _text(value):
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, dict):  # a JSON request: {"text": "..."}
        return str(value.get("text", ""))
    return str(value)


def prepare(data, context):
    """The request's text, whitespace collapsed: what both branches work on."""
    if data is None:
        return None
    row = data[0]
    return [" ".join(_text(row.get("data") or row.get("body") or b"").split())]


def statistics(data, context):
    """Counts the model does not give: characters and words."""
    if data is None:
        return None
    text = _text(data[0]["body"])
    return [{"characters": len(text), "words": len(text.split())}]


def report(data, context):
    """Joins both branches: the most likely language, its score, and the counts."""
    if data is None:
        return None
    languages = json.loads(data[0]["language"])
    counts = json.loads(data[0]["statistics"])
    best = max(languages, key=languages.get)
    return [{"language": best, "score": languages[best], **counts}]
