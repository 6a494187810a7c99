"""Decode one WAV request into mono float samples, with no native audio library.

Supported: RIFF/WAVE with integer PCM of 8 (unsigned), 16, 24 or 32 bits, IEEE float of 32
or 64 bits (``WAVE_FORMAT_IEEE_FLOAT``), either as a plain format tag or inside
``WAVE_FORMAT_EXTENSIBLE``; any number of channels, averaged to mono. The RIFF chunks are
read here rather than with Python's ``wave`` module, which refuses float WAVs (and, before
Python 3.12, extensible ones): one parser for every case. Compressed codecs (ADPCM, mu-law,
MP3-in-WAV, ...) are refused with a 400 that says so.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from handlers.audio_features import resample
from handlers.errors import BadInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from handlers.options import AUDIO_MAX_RATE as MAX_RATE
from handlers.options import AUDIO_MIN_RATE as MIN_RATE

PCM, IEEE_FLOAT, EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
MAX_CHANNELS = 32
_SUPPORTED_BITS = {PCM: (8, 16, 24, 32), IEEE_FLOAT: (32, 64)}
_INT_DTYPES = {16: torch.int16, 32: torch.int32}
_FLOAT_DTYPES = {32: torch.float32, 64: torch.float64}
# Declared types that are certainly not audio; anything else is judged by the bytes.
REFUSED_MEDIA_PREFIXES = ("text/", "application/json", "application/xml", "image/", "video/")


@dataclass(frozen=True)
class WavFormat:
    """What the ``fmt`` chunk says (the encoding after unwrapping WAVE_FORMAT_EXTENSIBLE)."""

    encoding: int
    channels: int
    sample_rate: int
    bits: int

    @property
    def frame_bytes(self) -> int:
        return self.channels * self.bits // 8


def check_audio_media_type(content_type: str | None, handler_name: str) -> None:
    """Refuse a declared content type that cannot be audio (415)."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media.startswith(REFUSED_MEDIA_PREFIXES):
        raise UnsupportedMediaTypeError(
            f"Content type {media!r} is not supported by {handler_name}: send a WAV file "
            "(audio/wav) as the body or as multipart field 'data'."
        )


def _chunks(data: bytes) -> dict[bytes, bytes]:
    """The first chunk of each kind after the RIFF/WAVE header."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise BadInputError(
            f"Request body ({len(data)} bytes) is not a WAV file (no RIFF/WAVE header): send PCM or "
            "float WAV audio, e.g. curl -T speech.wav http://127.0.0.1:8000/predictions/MODEL"
        )
    chunks: dict[bytes, bytes] = {}
    position = 12
    while position + 8 <= len(data):
        kind, size = struct.unpack_from("<4sI", data, position)
        position += 8
        # Streamed WAVs often leave the data size unset (0 or 0xFFFFFFFF): take what is there.
        chunks.setdefault(kind, data[position : position + size])
        position += size + (size & 1)  # chunks are padded to even sizes
    return chunks


def read_format(fmt: bytes) -> WavFormat:
    """Parse a ``fmt`` chunk; 400 for anything this decoder cannot turn into samples."""
    if len(fmt) < 16:
        raise BadInputError("WAV file has no complete 'fmt ' chunk.")
    encoding, channels, sample_rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if encoding == EXTENSIBLE:
        if len(fmt) < 40:
            raise BadInputError("WAV file is WAVE_FORMAT_EXTENSIBLE but its 'fmt ' chunk is truncated.")
        # The sub-format GUID starts with the real format tag.
        (encoding,) = struct.unpack_from("<H", fmt, 24)
    if encoding not in _SUPPORTED_BITS or bits not in _SUPPORTED_BITS[encoding]:
        raise BadInputError(
            f"Unsupported WAV encoding (format tag {encoding:#06x}, {bits} bits): send integer PCM "
            "(8/16/24/32-bit) or IEEE float (32/64-bit); compressed codecs are not decoded."
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise BadInputError(f"WAV file declares {channels} channels (1 to {MAX_CHANNELS} supported).")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise BadInputError(f"WAV sample rate {sample_rate} Hz is outside {MIN_RATE}-{MAX_RATE} Hz.")
    return WavFormat(encoding, channels, sample_rate, bits)


def _samples(raw: bytes, fmt: WavFormat) -> torch.Tensor:
    """Interleaved samples as float32 in [-1, 1] (integer PCM) or as stored (float)."""
    buffer = bytearray(raw)  # torch.frombuffer wants a writable buffer
    if fmt.encoding == IEEE_FLOAT:
        return torch.frombuffer(buffer, dtype=_FLOAT_DTYPES[fmt.bits]).float()
    if fmt.bits == 8:  # 8-bit WAV is unsigned, centred on 128
        return (torch.frombuffer(buffer, dtype=torch.uint8).float() - 128) / 128
    if fmt.bits == 24:
        triplets = torch.frombuffer(buffer, dtype=torch.uint8).view(-1, 3).int()
        values = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        values = values - ((values & 0x800000) << 1)  # sign-extend from 24 bits
        return values.float() / 2**23
    return torch.frombuffer(buffer, dtype=_INT_DTYPES[fmt.bits]).float() / 2 ** (fmt.bits - 1)


def decode_wav(data: bytes, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """Mono float32 samples and their sample rate.

    With ``max_seconds``, audio longer than that is refused with 413 before it is decoded.
    """
    chunks = _chunks(data)
    if b"fmt " not in chunks:
        raise BadInputError("WAV file has no 'fmt ' chunk.")
    fmt = read_format(chunks[b"fmt "])
    raw = chunks.get(b"data", b"")
    frames = len(raw) // fmt.frame_bytes
    if frames == 0:
        raise BadInputError("WAV file contains no audio samples.")
    seconds = frames / fmt.sample_rate
    if max_seconds is not None and seconds > max_seconds:
        raise PayloadTooLargeError(f"Audio is {seconds:.2f} s long, over the limit of {max_seconds} s.")
    mono = _samples(raw[: frames * fmt.frame_bytes], fmt).view(frames, fmt.channels).mean(dim=1)
    if not torch.isfinite(mono).all():
        raise BadInputError("WAV file contains NaN or infinite (or float32-overflowing) samples.")
    return mono, fmt.sample_rate


def decode_clip(data: bytes, sample_rate: int, max_seconds: float, crop: bool) -> torch.Tensor:
    """Mono samples at ``sample_rate``, at most ``max_seconds`` long.

    A longer clip is refused with 413, or with ``crop`` cut to its first ``max_seconds``.
    """
    samples, rate = decode_wav(data, max_seconds=None if crop else max_seconds)
    # Cropping before resampling saves work; the slack covers the filter's edge.
    samples = samples[: round(max_seconds * rate) + 1]
    return resample(samples, rate, sample_rate)[: round(max_seconds * sample_rate)]
