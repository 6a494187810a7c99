"""Bearer tokens: environment first, else a private key file; constant-time checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from deployments.common.auth import check_bearer, load_or_create_token
from handlers.errors import UnauthorizedError


def test_token_from_environment_wins(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RAYTORCH_TOKEN", "from-env")
    assert load_or_create_token(tmp_path) == "from-env"
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
