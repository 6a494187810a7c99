"""``audio_classifier``: a WAV clip -> log-mel spectrogram -> softmax -> top-k ``{label: probability}``.

Each clip is decoded (see :mod:`handlers.audio_io`), averaged to mono, resampled to
``sample_rate``, cut or refused past ``max_seconds``, zero-padded to exactly ``max_seconds``,
and turned into log-mel features (see :mod:`handlers.audio_features`). Every clip therefore
has the same shape, and the model receives ``[batch, 1, n_mels, frames]`` with
``frames = 1 + max_samples // hop_length``, returning logits ``[batch, classes]``.
For speech detection with Silero VAD see :mod:`handlers.voice_activity`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as nnf

from handlers.audio_features import log_mel_spectrogram, mel_filterbank
from handlers.audio_io import check_audio_media_type, decode_clip
from handlers.classification import TopKClassifier
from handlers.options import AudioOptions
from handlers.spec import ModelSpec


class AudioClassifier(TopKClassifier):
    """Returns ``{label: probability}`` for the top-k classes of a WAV clip, highest first."""

    name = "audio_classifier"
    Options = AudioOptions
    options: AudioOptions

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        o = self.options
        self.filterbank = mel_filterbank(o.n_mels, o.n_fft, o.sample_rate)

    def preprocess(self, data: bytes, content_type: str | None = None) -> torch.Tensor:
        check_audio_media_type(content_type, self.name)
        o = self.options
        return self.features(decode_clip(data, o.sample_rate, o.max_seconds, crop=o.long_audio == "crop"))

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """``[1, n_mels, frames]`` log-mel features of a mono clip at ``sample_rate``."""
        o = self.options
        padded = nnf.pad(samples, (0, o.max_samples - samples.shape[0]))
        return log_mel_spectrogram(padded, self.filterbank, o.n_fft, o.hop_length)[None]

    def example_input(self) -> torch.Tensor:
        return self.features(torch.zeros(self.options.max_samples))
