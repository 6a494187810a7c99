"""voice_activity: Silero VAD's frame probabilities joined into speech segments, per clip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.errors import BadInputError, PayloadTooLargeError, UnsupportedMediaTypeError
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from handlers.voice_activity import VoiceActivity
from tests.fixtures import real_models as real
from tests.fixtures.audio import make_wav, sine


def vad_spec(**options: object) -> ModelSpec:
    return ModelSpec.model_validate(
        {
            "name": "speech",
            "handler": "voice_activity",
            "source": {"torchscript": "pkg://silero_vad/data/silero_vad.jit"},
            "options": options,
        }
    )


@pytest.fixture(scope="module")
def vad() -> VoiceActivity:
    handler = create_handler(vad_spec(max_seconds=5.0))
    handler.load()
    assert isinstance(handler, VoiceActivity)
    return handler


@given(
    probabilities=st.lists(st.sampled_from([0.0, 0.2, 0.36, 0.45, 0.5, 0.7, 1.0]), max_size=120),
    tail=st.integers(0, 511),
    min_speech_ms=st.sampled_from([0, 100, 250]),
    min_silence_ms=st.sampled_from([0, 50, 100, 300]),
    speech_pad_ms=st.sampled_from([0, 30, 100]),
)
@settings(max_examples=300, deadline=None)
def test_segments_are_silero_vads_own(
    probabilities: list[float], tail: int, min_speech_ms: int, min_silence_ms: int, speech_pad_ms: int
) -> None:
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    options = {
        "min_speech_ms": min_speech_ms,
        "min_silence_ms": min_silence_ms,
        "speech_pad_ms": speech_pad_ms,
    }
    handler = create_handler(vad_spec(**options))
    assert isinstance(handler, VoiceActivity)
    samples = max(0, len(probabilities) - 1) * 512 + tail + 1
    expected = get_speech_timestamps_from_probs(
        probabilities,
        min_speech_duration_ms=min_speech_ms,
        min_silence_duration_ms=min_silence_ms,
        speech_pad_ms=speech_pad_ms,
        audio_length_samples=samples,
    )
    assert handler.speech_segments(probabilities, samples) == [[s["start"], s["end"]] for s in expected]


def test_speech_noise_and_silence_in_one_batch(vad: VoiceActivity) -> None:
    clips = [real.speech_wav(), real.noise_wav(), real.silence_wav()]
    items = [vad.preprocess(clip, "audio/wav") for clip in clips]
    speech, noise, silence = vad.predict_batch(items)
    real.check_speech_found(speech)
    real.check_no_speech(noise)
    real.check_no_speech(silence)
    assert noise["duration_seconds"] == 3.0 and silence["duration_seconds"] == 2.0


def test_any_sample_rate_and_channel_count(vad: VoiceActivity) -> None:
    # The espeak-ng clip resampled to 44.1 kHz stereo by the decoder's own path still is speech.
    samples = vad.preprocess(real.speech_wav())
    from handlers.audio_features import resample

    stereo = resample(samples, 16000, 44100)
    answer = vad.predict(make_wav([stereo, stereo], 44100, bits=32, as_float=True))
    assert answer["label"] == "speech"
    assert answer["segments"][0]["start"] == pytest.approx(0.5, abs=0.1)


def test_a_pure_tone_is_not_speech(vad: VoiceActivity) -> None:
    assert vad.predict(make_wav([sine(440, 16000, 2.0)], 16000))["label"] == "non_speech"


def test_stricter_threshold_finds_less_speech() -> None:
    strict = create_handler(vad_spec(threshold=0.95, neg_threshold=0.9))
    strict.load()
    loose = create_handler(vad_spec(threshold=0.3))
    loose.model = strict.model
    clip = real.speech_wav()
    assert strict.predict(clip)["speech_seconds"] < loose.predict(clip)["speech_seconds"]


def test_long_clips_are_refused_or_cropped(vad: VoiceActivity) -> None:
    six_seconds = make_wav([sine(440, 16000, 6.0)], 16000)
    with pytest.raises(PayloadTooLargeError, match=r"6\.00 s"):
        vad.preprocess(six_seconds)
    cropping = create_handler(vad_spec(max_seconds=5.0, long_audio="crop"))
    assert len(cropping.preprocess(six_seconds)) == 5 * 16000


def test_bad_inputs_fail_alone(vad: VoiceActivity, cat_png: bytes) -> None:
    with pytest.raises(BadInputError, match="not a WAV"):
        vad.preprocess(cat_png)
    with pytest.raises(UnsupportedMediaTypeError):
        vad.preprocess(real.speech_wav(), "text/plain")
