"""Handler options validate without torch, so app builders can refuse a typo before start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from handlers.errors import ConfigError
from handlers.handler_catalog import DEFAULT_HANDLERS, handler_class
from handlers.options import HANDLER_OPTIONS, validate_options
from tests.fixtures.specs import ROOT


def test_options_validate_without_importing_torch() -> None:
    code = (
        "import sys\n"
        "from handlers.options import validate_options\n"
        "validate_options('object_detector', {'score_threshold': 0.3})\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("handler", "options", "named"),
    [
        ("object_detector", {"scor_threshold": 0.3}, "options.scor_threshold"),
        ("object_detector", {"score_threshold": 2}, "options.score_threshold"),
        ("image_classifier", {"top_k": 3}, "options.top_k"),
        ("image_segmenter", {"single_channel_output": "odds"}, "options.single_channel_output"),
        ("text_classifier", {}, "options.vocab"),
        ("text_classifier", {"vocab": "v.txt", "tokenizer": "bpe"}, "options.tokenizer"),
        ("audio_classifier", {"n_mels": 400, "n_fft": 256}, "n_mels"),
        ("voice_activity", {"sample_rate": 44100}, "options.sample_rate"),
        ("voice_activity", {"threshold": 0.3, "neg_threshold": 0.6}, "neg_threshold"),
    ],
)
def test_a_bad_option_is_named(handler: str, options: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=f"handler {handler}: .*{named}"):
        validate_options(handler, options)


def test_good_options_pass() -> None:
    validate_options("voice_activity", {"threshold": 0.6, "min_speech_ms": 100})
    validate_options(
        "text_classifier", {"vocab": "pkg://py3langid/data/model.npz.xz", "tokenizer": "byte_ngrams"}
    )


def test_custom_handlers_check_their_own_options() -> None:
    validate_options("mypkg.handlers:Mine", {"anything": 1})


def test_every_default_handler_reads_the_options_model_listed_for_it() -> None:
    assert set(HANDLER_OPTIONS) == set(DEFAULT_HANDLERS)
    for name, options in HANDLER_OPTIONS.items():
        assert handler_class(name).Options is options
