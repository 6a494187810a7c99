"""The ``options:`` block of each default handler, importable without torch.

Each default handler reads its settings from one of these models (its ``Options`` class
attribute). They live here, apart from the handlers, so that processes which never run a
model (``serve run`` building the apps, the management API checking a registration) can
validate a spec's ``options`` with :func:`validate_options` and name a typo such as
``scor_threshold`` before any replica starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from handlers.errors import ConfigError
from handlers.spec import StrictModel
from handlers.tensor_data import TensorSignature

AUDIO_MIN_RATE, AUDIO_MAX_RATE = 1_000, 384_000


class NoOptions(StrictModel):
    """Handlers without specific settings accept an empty ``options`` block only."""


class DetectorOptions(StrictModel):
    """Settings of ``object_detector``."""

    score_threshold: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Drop detections scoring below this. The model's own threshold applies first "
            "(torchvision's box_score_thresh, 0.05 by default), so lower values change nothing."
        ),
    )
    max_detections: int = Field(100, ge=1, le=1000, description="At most this many boxes per image.")
    max_side: int = Field(
        1333,
        ge=32,
        le=8192,
        description=(
            "Images whose longer side exceeds this are downscaled before inference (boxes are "
            "scaled back). torchvision's detectors shrink to at most 1333 px anyway; this only "
            "bounds the memory a huge photo takes on its way there."
        ),
    )


class SegmenterOptions(StrictModel):
    """Settings of ``image_segmenter``."""

    raw_probabilities: bool = Field(
        False,
        description=(
            "Also return per-class probabilities on a coarse grid (longer side "
            "`probabilities_size` cells), as nested lists [class][row][column]."
        ),
    )
    probabilities_size: int = Field(
        32, ge=1, le=128, description="Longer side, in cells, of the `raw_probabilities` grid."
    )
    single_channel_output: Literal["probability", "logit"] = Field(
        "probability",
        description=(
            "How to read a model that returns one channel (foreground vs background, e.g. "
            "U²-Net): a probability in 0-1 (after a sigmoid) or a logit. Pixels over 0.5 "
            "(logit over 0) are class 1."
        ),
    )


class TextOptions(StrictModel):
    """Settings of ``text_classifier``."""

    tokenizer: Literal["words", "byte_ngrams"] = Field(
        "words",
        description=(
            "'words': `\\w+` words looked up in a vocabulary file. 'byte_ngrams': one token per "
            "UTF-8 byte, the id of the byte n-gram that a py3langid model's automaton recognises "
            "ending at that byte."
        ),
    )
    vocab: str = Field(
        ...,
        description=(
            "A path or 'pkg://package/file'. words: one token per line (line number = id) or a "
            ".json {token: id}; must contain '<unk>'; id 0 is padding. byte_ngrams: a py3langid "
            "model file (model.npz.xz)."
        ),
    )
    max_length: int = Field(
        256, ge=1, le=100_000, description="Tokens beyond this many are dropped (words, or bytes)."
    )
    max_chars: int = Field(20_000, ge=1, le=10_000_000, description="Longer texts are refused with 413.")
    lowercase: bool = Field(True, description="words: lowercase the text before looking words up.")


class AudioOptions(StrictModel):
    """Settings of ``audio_classifier``."""

    sample_rate: int = Field(
        16_000, ge=AUDIO_MIN_RATE, le=AUDIO_MAX_RATE, description="Clips are resampled to this rate (Hz)."
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


class VoiceActivityOptions(StrictModel):
    """Settings of ``voice_activity`` (defaults: Silero VAD's own ``get_speech_timestamps``)."""

    sample_rate: Literal[8000, 16000] = Field(
        16_000, description="Clips are resampled to this rate (Hz) and cut into 32 ms frames."
    )
    threshold: float = Field(0.5, gt=0, lt=1, description="A frame at or above this probability is speech.")
    neg_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Speech ends below this probability (hysteresis); default `threshold` - 0.15.",
    )
    min_speech_ms: int = Field(250, ge=0, le=60_000, description="Shorter speech segments are dropped.")
    min_silence_ms: int = Field(
        100, ge=0, le=60_000, description="Silence must last this long to end a segment."
    )
    speech_pad_ms: int = Field(30, ge=0, le=5_000, description="Segments are widened by this much each side.")
    max_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longer clips see `long_audio`; a batch runs as long as its longest clip.",
    )
    long_audio: Literal["reject", "crop"] = Field(
        "reject", description="A clip over `max_seconds`: 'reject' answers 413, 'crop' keeps its start."
    )

    @property
    def frame_samples(self) -> int:
        """Samples per frame: 512 at 16 kHz, 256 at 8 kHz (what Silero VAD takes)."""
        return self.sample_rate // 1000 * 32

    @property
    def exit_threshold(self) -> float:
        """The probability under which speech ends."""
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)

    @model_validator(mode="after")
    def _hysteresis(self) -> VoiceActivityOptions:
        if self.exit_threshold > self.threshold:
            raise ValueError(f"neg_threshold ({self.neg_threshold}) is above threshold ({self.threshold})")
        return self


# Default handler name -> its options model (custom handlers declare their own `Options`).
HANDLER_OPTIONS: dict[str, type[StrictModel]] = {
    "image_classifier": NoOptions,
    "object_detector": DetectorOptions,
    "image_segmenter": SegmenterOptions,
    "text_classifier": TextOptions,
    "audio_classifier": AudioOptions,
    "voice_activity": VoiceActivityOptions,
    "tensor": TensorSignature,
}


def parse_options(model: type[BaseModel], options: dict[str, object], handler: str) -> BaseModel:
    """``options`` validated against ``model``; ConfigError naming each bad field otherwise."""
    try:
        return model.model_validate(options)
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else f"options: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"Invalid options for handler {handler}: {problems}") from None


def validate_options(handler: str, options: dict[str, object]) -> None:
    """Check a spec's ``options`` for a default handler, without importing torch.

    Raises ConfigError naming the field (``options.score_threshold: ...``). Options of a
    custom handler (an import path or a file) are left to that handler, which checks them
    when it is created on the replica.
    """
    model = HANDLER_OPTIONS.get(handler)
    if model is not None:
        parse_options(model, options, handler)
