"""Shared fixtures: real photos shipped by scikit-image, specs for tiny and real models."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from handlers.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]


def photo_path(name: str) -> Path:
    """A real photo from scikit-image's data folder (chelsea.png is a cat, coffee.png a cup)."""
    import skimage

    return Path(skimage.__file__).parent / "data" / name


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


def tiny_spec(**overrides: object) -> ModelSpec:
    """A spec for the tiny random-weight classifier (fast to load in any test)."""
    data: dict[str, object] = {
        "name": "tiny",
        "source": {"factory": "tests.fixtures.models:tiny_classifier", "factory_kwargs": {"num_classes": 10}},
        "preprocess": {"resize": 64, "crop": 56},
        "top_k": 3,
        "warmup": False,
    }
    data.update(overrides)
    return ModelSpec.model_validate(data)


def quickstart_model_args() -> dict:
    """The model args of configs/quickstart.yaml, so tests exercise the shipped config."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    app = next(a for a in config["applications"] if a["import_path"].endswith("build_model"))
    return app["args"]


def png_bomb(width: int, height: int) -> bytes:
    """A ~100-byte valid PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


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
