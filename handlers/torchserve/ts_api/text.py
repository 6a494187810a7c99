"""TorchServe's text handlers: ``ts.torch_handler.text_handler.TextHandler``,
``ts.torch_handler.text_classifier.TextClassifier`` and ``ts.handler_utils.text_utils``.

The text classifier reads the archive's ``source_vocab.pt`` (a ``{token: index}`` mapping,
loaded with ``weights_only=True``), cleans the request's text (HTML tags, case,
contractions, accents, punctuation), splits it as torchtext's ``basic_english`` tokenizer
does, looks up its words and word bigrams, runs an ``EmbeddingBag`` model with offsets
``[0]`` and answers ``{label: probability}`` for every class. One text per call (TorchServe's
handler reads the first request of a batch; raytorch runs each request alone).
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from handlers.torchserve.ts_api.base_handler import BaseHandler
from handlers.torchserve.ts_api.util import map_class_to_label

HTML = re.compile(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")
# English contractions: whole words first, then one ending. TorchServe's own package, when
# installed, uses its table; these rules give the same text for every entry of it but "so's"
# (tests/unit/test_torchserve_examples.py compares them).
CONTRACTIONS = {
    "can't": "cannot", "won't": "will not", "shan't": "shall not", "sha'n't": "shall not",
    "ain't": "is not", "let's": "let us", "y'all": "you all", "ma'am": "madam",
    "o'clock": "of the clock", "'cause": "because",
}  # fmt: skip
ENDINGS = {"n't": "not", "'re": "are", "'ve": "have", "'ll": "will", "'d": "would", "'m": "am", "'s": "is"}
# "'s" is "is" only after these (otherwise a possessive); "'d" is "did" after these.
IS_AFTER = {"he", "she", "it", "that", "there", "what", "where", "when", "who", "why", "how"}
DID_AFTER = {"how", "where"}
_ENDING = re.compile(r"(n't|'re|'ve|'ll|'d|'m|'s)$")
_WHOLE = "|".join(re.escape(word) for word in sorted(CONTRACTIONS, key=len, reverse=True))
# One contraction per match, as TorchServe's table matches: "couldn't've" is "could not" and
# a "'ve" whose apostrophe then goes ("could notve").
_CONTRACTION = re.compile(rf"(?<![\w'])(?:(?:{_WHOLE})\b|\w+(?:n't|'(?:re|ve|ll|d|m|s)\b))", re.I)


def _expand_word(word: str) -> str:
    """One contracted word in full (lowercase), or the word itself when it is none."""
    stem, tail = word.lower(), []
    if stem in CONTRACTIONS:
        return CONTRACTIONS[stem]
    match = _ENDING.search(stem)
    if match is None or match.start() == 0:
        return word
    ending, rest = match.group(1), stem[: match.start()]
    if ending == "'s" and rest not in IS_AFTER:
        return word
    tail.append("did" if ending == "'d" and rest in DID_AFTER else ENDINGS[ending])
    return " ".join([CONTRACTIONS.get(rest, rest), *tail])


# torchtext's basic_english rules: quotes and punctuation become their own tokens or go.
_BASIC_ENGLISH = [
    (re.compile(r"\'"), " '  "), (re.compile(r"\""), ""), (re.compile(r"\."), " . "),
    (re.compile(r"<br \/>"), " "), (re.compile(r","), " , "), (re.compile(r"\("), " ( "),
    (re.compile(r"\)"), " ) "), (re.compile(r"\!"), " ! "), (re.compile(r"\?"), " ? "),
    (re.compile(r"\;"), " "), (re.compile(r"\:"), " "), (re.compile(r"\s+"), " "),
]  # fmt: skip


def ngrams_iterator(token_list: list[str], ngrams: int) -> Iterator[str]:
    """The tokens, then their n-grams up to ``ngrams`` words (joined by a space)."""
    yield from token_list
    for n in range(2, ngrams + 1):
        for start in range(len(token_list) - n + 1):
            yield " ".join(token_list[start : start + n])


def get_tokenizer(tokenizer: Any, language: str = "en") -> Callable[[str], list[str]]:
    """``"basic_english"`` (lowercase, punctuation split off), ``None`` (split on spaces), or a
    callable used as it is."""
    if callable(tokenizer):
        return tokenizer
    if tokenizer is None:
        return str.split
    if tokenizer != "basic_english":
        raise ValueError(f"Tokenizer {tokenizer!r} is not provided: use 'basic_english', None or a callable")

    def basic_english(line: str) -> list[str]:
        line = line.lower()
        for pattern, replacement in _BASIC_ENGLISH:
            line = pattern.sub(replacement, line)
        return line.split()

    return basic_english


class TextHandler(BaseHandler):
    """Loads ``source_vocab.pt`` beside the model and cleans text as TorchServe does."""

    def __init__(self) -> None:
        super().__init__()
        self.source_vocab: Any = None
        self.tokenizer = get_tokenizer("basic_english")

    def initialize(self, context: Any) -> None:
        super().initialize(context)
        self.initialized = False
        named = (self.manifest or {}).get("model", {}).get("sourceVocab")
        path = os.path.join(context.system_properties.get("model_dir"), named) if named else None
        self.source_vocab = torch.load(path or self.get_source_vocab_path(context), weights_only=True)
        self.initialized = True

    def get_source_vocab_path(self, ctx: Any) -> str:
        path = os.path.join(ctx.system_properties.get("model_dir"), "source_vocab.pt")
        if not os.path.isfile(path):
            raise RuntimeError("Missing the source_vocab.pt file beside the model: the text handler needs it")
        return path

    def _expand_contractions(self, text: str) -> str:
        def expand(match: re.Match[str]) -> str:
            word = match.group(0)
            full = _expand_word(word)
            return word[0] + full[1:]  # the first letter keeps its case, as on TorchServe

        return _CONTRACTION.sub(expand, text).replace("'", "")

    def _remove_accented_characters(self, text: str) -> str:
        return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("utf-8", "ignore")

    def _remove_html_tags(self, text: str) -> str:
        return HTML.sub("", text)

    def _remove_punctuation(self, text: str) -> str:
        return text.translate(str.maketrans("", "", string.punctuation))

    _remove_puncutation = _remove_punctuation  # TorchServe's older spelling

    def _tokenize(self, text: str) -> list[str]:
        return self.tokenizer(text)

    def get_word_token(self, input_tokens: list[str]) -> list[str]:
        return [token.replace("\u0120", "") for token in input_tokens]


class TextClassifier(TextHandler):
    """Every class's probability for one text, as ``[{label: probability}]``."""

    ngrams = 2

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[torch.Tensor, list[str]]:
        text = data[0].get("data") or data[0].get("body")
        if isinstance(text, bytes | bytearray):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise ValueError("the text classifier takes a text body")
        text = self._remove_html_tags(text).lower()
        text = self._remove_punctuation(self._remove_accented_characters(self._expand_contractions(text)))
        tokens = self._tokenize(text)
        ids = [self.source_vocab[token] for token in ngrams_iterator(tokens, self.ngrams)]
        return torch.as_tensor(ids, device=self.device), tokens

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        text_tensor, _ = data
        return super().inference(text_tensor, torch.as_tensor([0], device=self.device))

    def postprocess(self, data: torch.Tensor) -> list[dict[str, float]]:
        return map_class_to_label(F.softmax(data, dim=-1).tolist(), self.mapping)
