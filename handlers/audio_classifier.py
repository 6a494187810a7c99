"""``audio_classifier``: a WAV clip -> log-mel spectrogram -> softmax -> top-k ``{label: probability}``.

Each clip is decoded (see :mod:`handlers.audio_io`), averaged to mono, resampled to
``sample_rate``, cut or refused past ``max_seconds``, zero-padded to exactly ``max_seconds``,
and turned into log-mel features (see :mod:`handlers.audio_features`). Every clip therefore
has the same shape, and the model receives ``[batch, 1, n_mels, frames]`` with
``frames = 1 + max_samples // hop_length``, returning logits ``[batch, classes]``
(``handlers.zoo.tiny_audio_cnn`` is an example).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch.nn import functional as nnf

from handlers.audio_features import log_mel_spectrogram, mel_filterbank, resample
from handlers.audio_io import MAX_RATE, MIN_RATE, check_audio_media_type, decode_wav
from handlers.classification import TopKClassifier
from handlers.spec import ModelSpec, StrictModel


class AudioOptions(StrictModel):
    """Settings of ``audio_classifier`` (the spec's ``options`` block)."""

    sample_rate: int = Field(
        16_000, ge=MIN_RATE, le=MAX_RATE, description="Clips are resampled to this rate (Hz)."
    )
    n_mels: int = Field(64, ge=1, le=512, description="Mel bands of the spectrogram.")
    n_fft: int = Field(512, ge=16, le=16_384, description="STFT window length in samples (Hann window).")
    hop_length: int = Field(160, ge=1, le=16_384, description="Samples between STFT frames.")
    max_seconds: float = Field(
        10.0, gt=0, le=600, description="Clips are zero-padded to this length; longer ones see `long_audio`."
    )
    long_audio: Literal["reject", "crop"] = Field(
        "reject", description="A clip over `max_seconds`: 'reject' answers 413, 'crop' keeps its start."
    )

    @property
    def max_samples(self) -> int:
        """Length of every clip after padding, at ``sample_rate``."""
        return round(self.max_seconds * self.sample_rate)

    @model_validator(mode="after")
    def _consistent(self) -> AudioOptions:
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels ({self.n_mels}) exceeds the {self.n_fft // 2 + 1} STFT bins of n_fft")
        if self.n_fft > self.max_samples:
            raise ValueError(f"n_fft ({self.n_fft}) is longer than a whole max_seconds clip")
        return self


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
        limit = o.max_seconds if o.long_audio == "reject" else None
        samples, rate = decode_wav(data, max_seconds=limit)
        # Cropping before resampling saves work; the slack covers the filter's edge.
        samples = samples[: round(o.max_seconds * rate) + 1]
        samples = resample(samples, rate, o.sample_rate)[: o.max_samples]
        return self.features(samples)

    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """``[1, n_mels, frames]`` log-mel features of a mono clip at ``sample_rate``."""
        o = self.options
        padded = nnf.pad(samples, (0, o.max_samples - samples.shape[0]))
        return log_mel_spectrogram(padded, self.filterbank, o.n_fft, o.hop_length)[None]

    def example_input(self) -> torch.Tensor:
        return self.features(torch.zeros(self.options.max_samples))
