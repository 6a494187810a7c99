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

import torch

from handlers.byte_ngrams import ByteNgramTokenizer, read_langid_model
from handlers.classification import TopKClassifier
from handlers.errors import BadInputError
from handlers.loading import resolve_path
from handlers.options import TextOptions
from handlers.text_io import PAD_ID, Vocabulary, read_text, read_vocabulary


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
