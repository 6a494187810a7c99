"""The audio_classifier handler: WAV decoding, resampling, log-mel features, top-k answers."""

from __future__ import annotations

import io
import struct
import wave

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.audio_classifier import AudioClassifier
from handlers.audio_features import mel_center_frequencies
from handlers.audio_io import decode_wav
from handlers.errors import (
    BadInputError,
    ConfigError,
    PayloadTooLargeError,
    RaytorchError,
    UnsupportedMediaTypeError,
)
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures.audio import make_wav, riff, sine


def audio_spec(**options: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "audio",
            "handler": "audio_classifier",
            "source": {
                "factory": "tests.fixtures.models:tiny_audio_cnn",
                "factory_kwargs": {"num_classes": 6},
            },
            "top_k": 4,
            "options": {"max_seconds": 1.0, "n_mels": 32, **options},
        }
    )


@pytest.fixture(scope="module")
def classifier() -> AudioClassifier:
    torch.manual_seed(0)
    handler = create_handler(audio_spec())
    handler.load()
    assert isinstance(handler, AudioClassifier)
    return handler


@pytest.mark.parametrize(
    ("bits", "as_float", "extensible", "tolerance"),
    [
        (8, False, False, 1e-2),
        (16, False, False, 1e-4),
        (24, False, False, 1e-6),
        (32, False, False, 1e-6),
        (32, True, False, 1e-7),
        (64, True, False, 1e-7),
        (24, False, True, 1e-6),
        (32, True, True, 1e-7),
    ],
)
def test_every_supported_encoding_decodes(
    bits: int, as_float: bool, extensible: bool, tolerance: float
) -> None:
    signal = sine(440, 8000, 0.05)
    samples, rate = decode_wav(make_wav([signal], 8000, bits, as_float, extensible))
    assert rate == 8000
    assert torch.allclose(samples, signal, atol=tolerance)


def test_wav_written_by_pythons_wave_module_decodes() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1), out.setsampwidth(2), out.setframerate(22050)
        out.writeframes(struct.pack("<4h", 0, 16384, -16384, 32767))
    samples, rate = decode_wav(buffer.getvalue())
    assert rate == 22050 and samples.tolist() == pytest.approx([0, 0.5, -0.5, 32767 / 32768])


def test_stereo_is_averaged_to_mono() -> None:
    left, right = sine(440, 16000, 0.1), sine(1000, 16000, 0.1)
    samples, _ = decode_wav(make_wav([left, right], 16000, bits=32, as_float=True))
    assert torch.allclose(samples, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_a_sine_lands_in_its_mel_band_at_any_sample_rate(classifier: AudioClassifier, rate: int) -> None:
    features = classifier.preprocess(make_wav([sine(1000, rate, 0.5)], rate), "audio/wav")
    assert features.shape == (1, 32, 101)  # 1 s at 16 kHz, hop 160
    # Only the first half second is sound; the rest is padding.
    loudest_band = int(features[0, :, 5:45].mean(dim=1).argmax())
    assert loudest_band == int((mel_center_frequencies(32, 16000) - 1000).abs().argmin())


def test_clips_of_different_lengths_batch_like_singles(classifier: AudioClassifier) -> None:
    clips = [make_wav([sine(f, 16000, s)], 16000) for f, s in ((300, 0.2), (2000, 0.9), (700, 1.0))]
    items = [classifier.preprocess(clip) for clip in clips]
    batch = classifier.predict_batch(items)
    for got, item in zip(batch, items, strict=True):
        alone = classifier.predict_batch([item])[0]
        assert list(got) == list(alone)
        probabilities = list(got.values())
        assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
        assert 0 < sum(probabilities) <= 1.0001


def test_long_clips_are_refused_or_cropped(classifier: AudioClassifier) -> None:
    long_clip = make_wav([sine(440, 8000, 1.5)], 8000)
    with pytest.raises(PayloadTooLargeError, match=r"1\.50 s"):
        classifier.preprocess(long_clip)
    cropping = create_handler(audio_spec(long_audio="crop"))
    assert cropping.preprocess(long_clip).shape == (1, 32, 101)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not a WAV"),
        (b"ID3\x03mp3 bytes", "not a WAV"),
        (riff((b"data", b"\x00\x00")), "no 'fmt '"),
        (riff((b"fmt ", b"\x01\x00")), "complete 'fmt '"),
        (
            riff((b"fmt ", struct.pack("<HHIIHH", 2, 1, 8000, 4000, 1, 4)), (b"data", b"\x00" * 8)),
            "format tag",
        ),
        (riff((b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 8000, 1, 12)), (b"data", b"\x00" * 8)), "12 bits"),
        (
            riff((b"fmt ", struct.pack("<HHIIHH", 1, 1, 50, 100, 2, 16)), (b"data", b"\x00" * 8)),
            "sample rate",
        ),
        (riff((b"fmt ", struct.pack("<HHIIHH", 1, 0, 8000, 0, 0, 16)), (b"data", b"\x00" * 8)), "channels"),
        (riff((b"fmt ", struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16))), "no audio"),
        (make_wav([torch.tensor([0.0, float("nan")])], 8000, 32, as_float=True), "NaN"),
    ],
)
def test_unusable_wavs_are_bad_input(classifier: AudioClassifier, body: bytes, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        classifier.preprocess(body)


def test_declared_non_audio_types_are_refused(classifier: AudioClassifier) -> None:
    clip = make_wav([sine(440, 16000, 0.1)], 16000)
    with pytest.raises(UnsupportedMediaTypeError):
        classifier.preprocess(clip, "image/png")
    assert classifier.preprocess(clip, "audio/x-wav").shape == (1, 32, 101)


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="sample_rte"):
        create_handler(audio_spec(sample_rte=8000))
    with pytest.raises(ConfigError, match="n_mels"):
        create_handler(audio_spec(n_mels=400, n_fft=256))


wav_headers = st.builds(
    lambda tag, channels, rate, bits, data: riff(
        (b"fmt ", struct.pack("<HHIIHH", tag, channels, rate, 0, 0, bits) + bytes(24)), (b"data", data)
    ),
    tag=st.sampled_from([1, 2, 3, 0xFFFE, 0x55]),
    channels=st.integers(0, 40),
    rate=st.integers(0, 2**32 - 1),
    bits=st.sampled_from([0, 4, 8, 12, 16, 24, 32, 64]),
    data=st.binary(max_size=200),
)


def real_wav(
    frames: int, channels: int, rate: int, bits: int, as_float: bool
) -> tuple[tuple[int, int], bytes]:
    waves = [sine(220.0 * (c + 1), rate, frames / rate)[:frames] for c in range(channels)]
    return (frames, rate), make_wav(waves, rate, bits=bits, as_float=as_float)


real_wavs = st.one_of(
    st.builds(real_wav, st.integers(1, 400), st.integers(1, 4), st.sampled_from([8000, 16000, 44100]),
              st.sampled_from([8, 16, 24, 32]), st.just(False)),
    st.builds(real_wav, st.integers(1, 400), st.integers(1, 4), st.sampled_from([8000, 16000, 44100]),
              st.sampled_from([32, 64]), st.just(True)),
)  # fmt: skip
broken_wavs = st.one_of(st.binary(max_size=200), wav_headers, wav_headers.map(lambda b: b[: len(b) // 2]))


@given(case=st.one_of(broken_wavs.map(lambda body: (None, body)), real_wavs))
@settings(max_examples=300, deadline=None)
def test_real_wavs_decode_and_any_bytes_give_samples_or_a_project_error(
    case: tuple[tuple[int, int] | None, bytes],
) -> None:
    expected, body = case  # expected: (frames, rate) of a real WAV, which must decode
    try:
        samples, rate = decode_wav(body, max_seconds=5.0)
    except RaytorchError as exc:
        assert expected is None, f"a real WAV {expected} was refused: {exc.message}"
        return
    assert samples.dim() == 1 and samples.numel() > 0 and rate > 0
    assert torch.isfinite(samples).all()
    if expected is not None:
        assert (samples.numel(), rate) == expected
