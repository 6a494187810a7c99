"""The example configs serve real pretrained models offline, with answers a user can check."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from handlers.base import BaseHandler
from handlers.handler_catalog import create_handler
from handlers.spec import ModelSpec
from tests.fixtures import real_models as real
from tests.fixtures.specs import ROOT, photo_path


def model_spec(config: Path) -> ModelSpec:
    raw = yaml.safe_load(config.read_text())
    (app,) = (a for a in raw["applications"] if a["import_path"].endswith(":build_model"))
    return ModelSpec.model_validate(app["args"]["model"])


def loaded(config_name: str) -> BaseHandler:
    handler = create_handler(model_spec(ROOT / "configs" / config_name))
    handler.load()  # includes the warm-up batch
    return handler


@pytest.fixture(scope="module")
def faces() -> BaseHandler:
    return loaded("object_detector.yaml")


@pytest.fixture(scope="module")
def salient() -> BaseHandler:
    return loaded("image_segmenter.yaml")


@pytest.fixture(scope="module")
def language() -> BaseHandler:
    return loaded("text_classifier.yaml")


@pytest.fixture(scope="module")
def speech() -> BaseHandler:
    return loaded("audio_classifier.yaml")


def test_the_astronauts_face_and_no_face_on_the_cat_or_the_coffee(
    faces: BaseHandler, cat_png: bytes, coffee_png: bytes
) -> None:
    astronaut = photo_path("astronaut.png").read_bytes()
    found = faces.predict_batch([faces.preprocess(png) for png in (astronaut, cat_png, coffee_png)])
    real.check_astronaut_face(found[0])
    assert found[1:] == [[], []]


def test_the_cat_is_the_salient_object(salient: BaseHandler, cat_png: bytes, coffee_png: bytes) -> None:
    cat, _ = salient.predict_batch([salient.preprocess(cat_png), salient.preprocess(coffee_png)])
    real.check_cat_mask(cat)
    assert salient.predict(cat_png) == cat  # the coffee in its batch changed nothing


@pytest.mark.parametrize("code", sorted(real.SENTENCES))
def test_languages_are_identified(language: BaseHandler, code: str) -> None:
    real.check_language(language.predict(real.SENTENCES[code].encode(), "text/plain"), code)


def test_language_labels_are_iso_codes(language: BaseHandler) -> None:
    assert language.labels is not None and len(language.labels) == 140
    assert {"en", "fr", "de", "es", "zh", "ja"} <= set(language.labels)


def test_speech_is_found_in_speech_only(speech: BaseHandler) -> None:
    clips = [real.speech_wav(), real.noise_wav(), real.silence_wav()]
    found, noise, silence = speech.predict_batch([speech.preprocess(clip) for clip in clips])
    real.check_speech_found(found)
    real.check_no_speech(noise)
    real.check_no_speech(silence)
    assert speech.predict(clips[0]) == found  # batch-mates do not change an answer


def test_a_fresh_espeak_recording_in_german_is_speech(speech: BaseHandler) -> None:
    answer = speech.predict(real.espeak_wav("Guten Tag, wie geht es Ihnen heute?", "de"), "audio/wav")
    assert answer["label"] == "speech" and answer["speech_seconds"] > 1.0, answer
