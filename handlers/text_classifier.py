"""TorchServe's ``text_classifier``: text -> token ids -> softmax -> top-k ``{label: probability}``.

The model's calling convention: ``model(token_ids)`` with ``token_ids`` a LongTensor
``[batch, tokens]``, right-padded with id 0, returning logits ``[batch, classes]``. The model
must ignore id 0 (``nn.EmbeddingBag(padding_idx=0)`` does). A batch is padded to its longest
text only. Two tokenizers (option ``tokenizer``):

- ``words``: the ``\\w+`` words of the text looked up in a vocabulary file;
- ``byte_ngrams``: one token per UTF-8 byte, the byte n-gram a py3langid model recognises
  there (:mod:`handlers.byte_ngrams`), for ``handlers.zoo:language_identifier``
  (``configs/text_classifier.yaml``).
"""

from __future__ import annotations

import unicodedata

import torch

from handlers.byte_ngrams import ByteNgramTokenizer, read_langid_model
from handlers.classification import TopKClassifier
from handlers.errors import BadInputError
from handlers.explain import ExplainRequest, Steps, TextItem, resolve_target, word_ablation
from handlers.loading import resolve_path
from handlers.options import TextOptions
from handlers.text_io import PAD_ID, WORD, Vocabulary, read_text, read_vocabulary

ASCII_SPACE = b" \t\n\r\x0b\x0c"


class TextClassifier(TopKClassifier):
    """Returns ``{label: probability}`` for the top-k classes of a text, highest first."""

    name = "text_classifier"
    Options = TextOptions
    options: TextOptions

    def load(self) -> None:
        # The tokenizer first: warm-up (inside the base load) already tokenizes.
        path = resolve_path(self.options.vocab, self.spec.base_dir)
        self.tokenizer: Vocabulary | ByteNgramTokenizer
        if self.options.tokenizer == "byte_ngrams":
            self.tokenizer = ByteNgramTokenizer(read_langid_model(path))
        else:
            self.tokenizer = Vocabulary(read_vocabulary(path), lowercase=self.options.lowercase)
        super().load()

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        text = read_text(data, content_type, self.options.max_chars)
        token_ids = self.tokenizer.encode(text, self.options.max_length)
        if not token_ids:
            raise BadInputError("Text contains no words to classify (only punctuation or symbols).")
        return torch.tensor(token_ids, dtype=torch.long)

    def example_input(self) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode("example", self.options.max_length))

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=PAD_ID)

    def explain_input(self, data: bytes, content_type: str | None = None) -> TextItem:
        """The text's token ids and its words with their token positions."""
        text = read_text(data, content_type, self.options.max_chars)
        token_ids = self.tokenizer.encode(text, self.options.max_length)
        if not token_ids:
            raise BadInputError("Text contains no words to classify (only punctuation or symbols).")
        return TextItem(torch.tensor(token_ids, dtype=torch.long), self.word_positions(text, len(token_ids)))

    def word_positions(self, text: str, tokens: int) -> list[tuple[str, list[int]]]:
        """Each word of ``text`` with the positions of its tokens: ``words`` tokens are words;
        ``byte_ngrams`` tokens are bytes, grouped by the whitespace-separated word they are in."""
        if self.options.tokenizer == "words":
            lowered = text.lower() if self.options.lowercase else text
            return [(word, [i]) for i, word in enumerate(WORD.findall(lowered)[:tokens])]
        prepared = unicodedata.normalize("NFC", text.lower() if text.isupper() else text)
        data = prepared.encode("utf-8", errors="surrogatepass")[:tokens]
        words: list[tuple[str, list[int]]] = []
        start = None
        for i in range(len(data) + 1):
            inside = i < len(data) and data[i] not in ASCII_SPACE  # never inside a multi-byte character
            if inside and start is None:
                start = i
            elif not inside and start is not None:
                words.append((data[start:i].decode("utf-8", errors="replace"), list(range(start, i))))
                start = None
        return words

    def explain(self, item: TextItem, request: ExplainRequest) -> Steps:
        """Per word, how much the target class's probability (default: the top class) drops
        without it: ``{"words", "importances", "target"}`` (TorchServe's keys, plus the class)."""
        assert self.model is not None, "load() must run before explain()"
        if request.heatmap:
            raise BadInputError("A heat map (image/png) explains images; this model explains texts as JSON")
        token_ids = item.token_ids.unsqueeze(0).to(self.device)
        with torch.inference_mode():
            logits = self.model(token_ids)
        target = resolve_target(request.target, self.labels, logits)
        positions = [p for _, p in item.words]
        chunk = self.spec.explain.internal_batch_size
        model = self.model

        def probabilities(ids: torch.Tensor) -> torch.Tensor:
            # Probabilities, not logits: this model's logits scale with the text's length,
            # so a shorter text would look "more" of every class.
            return torch.softmax(model(ids).float(), dim=-1)

        importances = yield from word_ablation(probabilities, token_ids, positions, target, chunk)
        return {
            "words": [word for word, _ in item.words],
            "importances": [float(f"{value:.6g}") for value in importances],
            "target": self.label(target),
        }
