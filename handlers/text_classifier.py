"""TorchServe's ``text_classifier``: words -> token ids -> softmax -> top-k ``{label: probability}``.

The model's calling convention: ``model(token_ids)`` with ``token_ids`` a LongTensor
``[batch, tokens]``, right-padded with id 0, returning logits ``[batch, classes]``. The model
must ignore id 0 (``nn.EmbeddingBag(padding_idx=0)`` does; see
``handlers.zoo.text_bag_classifier``). A batch is padded to its longest text only.
"""

from __future__ import annotations

import torch
from pydantic import Field

from handlers.classification import TopKClassifier
from handlers.errors import BadInputError
from handlers.loading import resolve_path
from handlers.spec import StrictModel
from handlers.text_io import PAD_ID, Vocabulary, read_text, read_vocabulary


class TextOptions(StrictModel):
    """Settings of ``text_classifier`` (the spec's ``options`` block)."""

    vocab: str = Field(
        ...,
        description=(
            "Vocabulary file: a path or 'pkg://package/file'. One token per line (line number = "
            "id) or a .json {token: id}; must contain '<unk>'; id 0 is padding."
        ),
    )
    max_length: int = Field(256, ge=1, le=100_000, description="Words beyond this many are dropped.")
    max_chars: int = Field(20_000, ge=1, le=10_000_000, description="Longer texts are refused with 413.")
    lowercase: bool = Field(True, description="Lowercase the text before looking words up.")


class TextClassifier(TopKClassifier):
    """Returns ``{label: probability}`` for the top-k classes of a text, highest first."""

    name = "text_classifier"
    Options = TextOptions
    options: TextOptions

    def load(self) -> None:
        # The vocabulary first: warm-up (inside the base load) already tokenizes.
        ids = read_vocabulary(resolve_path(self.options.vocab, self.spec.base_dir))
        self.vocabulary = Vocabulary(ids, lowercase=self.options.lowercase)
        super().load()

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        text = read_text(data, content_type, self.options.max_chars)
        token_ids = self.vocabulary.encode(text, self.options.max_length)
        if not token_ids:
            raise BadInputError("Text contains no words to classify (only punctuation or symbols).")
        return torch.tensor(token_ids, dtype=torch.long)

    def example_input(self) -> torch.Tensor:
        return torch.tensor([self.vocabulary.unk_id], dtype=torch.long)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=PAD_ID)
