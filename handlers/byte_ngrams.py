"""py3langid's language identifier read as plain arrays: a byte n-gram automaton and weights.

``py3langid`` (BSD-3-Clause, a fork of Marco Lui's langid.py) ships its model as
``py3langid/data/model.npz.xz``: numpy arrays in an LZMA-compressed ``.npz``, loaded here with
``allow_pickle=False`` and without importing the package. Its naive Bayes classifier is

    scores = log1p(count of each n-gram feature) @ ptc + pc,  probabilities = softmax(scores / sqrt(bytes))

where the features are found by a deterministic automaton over the text's UTF-8 bytes (each
byte moves it to a state, and a state may mark one feature). The tokenizer below turns a
text into one token per byte, which :class:`handlers.zoo.LanguageIdentifier` counts; no torch here.
"""

from __future__ import annotations

import io
import lzma
import unicodedata
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from handlers.errors import ModelLoadError

_ARRAYS = ("ptc", "pc", "classes", "nextmove", "nextmove_row", "out_feat")


@dataclass(frozen=True)
class LangidModel:
    """The arrays of a py3langid model file."""

    ptc: np.ndarray  # [features, classes] log P(feature | class), float16
    pc: np.ndarray  # [classes] log P(class)
    classes: list[str]  # ISO 639 codes; a code may appear twice (two scripts, e.g. 'sr')
    nextmove: np.ndarray  # automaton transitions: distinct 256-entry rows, flattened
    nextmove_row: np.ndarray  # [states] -> row of `nextmove`
    out_feat: np.ndarray  # [states] -> feature index marked by that state, or -1


def read_langid_model(path: Path) -> LangidModel:
    """Read a py3langid ``model.npz.xz`` (no pickles are executed)."""
    try:
        with lzma.open(path) as compressed:
            raw = compressed.read()
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            missing = [name for name in _ARRAYS if name not in data.files]
            if missing:
                raise ModelLoadError(f"{path} is not a py3langid model: it lacks {missing}")
            arrays = {name: data[name] for name in _ARRAYS}
    except (OSError, ValueError, lzma.LZMAError) as exc:
        raise ModelLoadError(f"Cannot read py3langid model {path}: {exc}") from exc
    return LangidModel(**{**arrays, "classes": [str(c) for c in arrays["classes"].tolist()]})


class ByteNgramTokenizer:
    """Text -> one token id per UTF-8 byte: 1 + the feature marked there, or ``no_feature``.

    Id 0 stays free for padding, and the sequence length is the text's byte length, which the
    classifier needs for its temperature. Texts are prepared as py3langid does: an all-capitals
    text is lowercased, then Unicode NFC.
    """

    def __init__(self, model: LangidModel) -> None:
        # array('I') indexing is several times faster than numpy scalar indexing in this loop.
        self.transitions = array("I", model.nextmove.astype(np.uint32).tobytes())
        self.row_start = [int(row) << 8 for row in model.nextmove_row.tolist()]
        self.marks = [int(f) + 1 for f in model.out_feat.tolist()]  # feature f -> id f + 1; -1 -> 0
        self.features = int(model.ptc.shape[0])
        self.no_feature = self.features + 1

    def encode(self, text: str, max_length: int) -> list[int]:
        """Token ids of the first ``max_length`` bytes of ``text``."""
        if text.isupper():
            text = text.lower()
        data = unicodedata.normalize("NFC", text).encode("utf-8", errors="surrogatepass")[:max_length]
        transitions, row_start, marks, none = self.transitions, self.row_start, self.marks, self.no_feature
        state, ids = 0, []
        for byte in data:
            state = transitions[row_start[state] + byte]
            ids.append(marks[state] or none)
        return ids
