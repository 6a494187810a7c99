"""Bearer tokens: environment first, else a private key file; constant-time checks."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from deployments.common.auth import check_bearer, load_or_create_token
from handlers.errors import ConfigError, UnauthorizedError


def test_token_from_environment_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAYTORCH_TOKEN", "from-the-environment")
    assert load_or_create_token(tmp_path) == "from-the-environment"
    assert not (tmp_path / "key_file.json").exists()


def test_generated_token_is_private_and_stable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAYTORCH_TOKEN", raising=False)
    token = load_or_create_token(tmp_path)
    assert len(token) >= 24 and load_or_create_token(tmp_path) == token
    mode = stat.S_IMODE(os.stat(tmp_path / "key_file.json").st_mode)
    assert mode == 0o600


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic abc", "Bearer wrong"])
def test_bad_bearer_headers(header: str | None) -> None:
    with pytest.raises(UnauthorizedError):
        check_bearer(header, "right")


def test_good_bearer_header() -> None:
    check_bearer("Bearer right", "right")


@pytest.mark.parametrize("weak", ["a", "secret", "aaaaaaaaaaaaaaaaaaaa", "0123456789abcde"])
def test_a_weak_token_from_the_environment_is_refused_saying_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weak: str
) -> None:
    monkeypatch.setenv("RAYTORCH_TOKEN", weak)
    with pytest.raises(ConfigError, match=r"RAYTORCH_TOKEN .* too weak .* at least 16"):
        load_or_create_token(tmp_path)


@pytest.mark.parametrize(
    "content",
    ["", '{"management": {"ke', "[]", '{"management": {"key": 42}}', '{"management": {"key": "a"}}'],
)
def test_an_unusable_key_file_is_moved_aside_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    monkeypatch.delenv("RAYTORCH_TOKEN", raising=False)
    (tmp_path / "key_file.json").write_text(content)
    with caplog.at_level(logging.ERROR):
        token = load_or_create_token(tmp_path)
    assert len(token) >= 24
    assert json.loads((tmp_path / "key_file.json").read_text())["management"]["key"] == token
    kept = list(tmp_path.glob("key_file.json.bad-*"))
    assert len(kept) == 1 and kept[0].read_text() == content  # nothing is lost
    assert "cannot be used" in caplog.text and str(kept[0]) in caplog.text


def test_a_key_file_others_can_read_is_made_private_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RAYTORCH_TOKEN", raising=False)
    token = load_or_create_token(tmp_path)
    os.chmod(tmp_path / "key_file.json", 0o644)
    with caplog.at_level(logging.WARNING):
        assert load_or_create_token(tmp_path) == token
    assert stat.S_IMODE(os.stat(tmp_path / "key_file.json").st_mode) == 0o600
    assert "readable by others (mode 644)" in caplog.text
