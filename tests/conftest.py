"""Shared fixtures: real photos shipped by scikit-image, and an access-log directory per run.
Helpers (specs, photos, crafted inputs) live in tests/fixtures, not here."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.fixtures.specs import photo_path


@pytest.fixture(scope="session")
def cat_png() -> bytes:
    return photo_path("chelsea.png").read_bytes()


@pytest.fixture(scope="session")
def coffee_png() -> bytes:
    return photo_path("coffee.png").read_bytes()


@pytest.fixture(scope="session")
def cat_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.open(photo_path("chelsea.png")).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session", autouse=True)
def _access_log_in_a_temporary_dir(tmp_path_factory: pytest.TempPathFactory):
    """Apps built by tests write their access log under pytest's tmp dir, not the checkout."""
    import os

    previous = os.environ.get("RAYTORCH_LOG_DIR")
    os.environ["RAYTORCH_LOG_DIR"] = str(tmp_path_factory.mktemp("access-logs"))
    yield
    if previous is None:
        os.environ.pop("RAYTORCH_LOG_DIR", None)
    else:
        os.environ["RAYTORCH_LOG_DIR"] = previous
