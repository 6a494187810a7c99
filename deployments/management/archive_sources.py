"""Where a registered archive comes from, and where its files end up.

``url`` names an archive inside the model store (path traversal refused) or an allow-listed
remote URL, which is downloaded into the store. Archives are unpacked into a scratch folder and
moved to ``<state>/models/<name>/<version>`` once the registration is accepted. No Ray here.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path

from handlers.archive import ArchiveModel, extract, read_extracted
from handlers.errors import BadInputError, DownloadArchiveError, ModelNotFoundError

DOWNLOAD_TIMEOUT_S = 60
MAX_DOWNLOAD_BYTES = 4 * 1024**3


def resolve_url(url: str, model_store: Path, allowed_urls: list[str]) -> Path:
    """The archive file or folder ``url`` names, downloading allow-listed remote URLs."""
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        return _download(url, model_store, allowed_urls)
    store = model_store.resolve()
    candidate = (store / url).resolve()
    if Path(url).is_absolute() or not candidate.is_relative_to(store) or candidate == store:
        raise BadInputError(f"Invalid url {url!r}: it must name an archive inside the model store")
    if not candidate.exists():
        raise ModelNotFoundError(f"Model not found at: {url}")
    return candidate


def _download(url: str, model_store: Path, allowed_urls: list[str]) -> Path:
    if not any(re.fullmatch(pattern, url) for pattern in allowed_urls):
        raise BadInputError(f"URL {url} is not allowed: add a matching pattern to allowed_urls")
    name = Path(url.split("?", 1)[0]).name or "archive.mar"
    target = model_store / name
    model_store.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(target, "wb") as out:
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > MAX_DOWNLOAD_BYTES:
                    raise DownloadArchiveError(f"Archive at {url} is over {MAX_DOWNLOAD_BYTES} bytes")
                out.write(chunk)
    except DownloadArchiveError:
        target.unlink(missing_ok=True)
        raise
    except Exception as exc:
        target.unlink(missing_ok=True)
        raise DownloadArchiveError(f"Failed to download archive from: {url} ({exc})") from None
    return target


def unpack(archive: Path, models_dir: Path, hint: str) -> tuple[ArchiveModel, Path]:
    """Extract into a scratch folder and read it; the caller moves it to its final place."""
    scratch = models_dir / ".incoming" / hint
    folder = extract(archive, scratch)
    return read_extracted(folder), folder


def settle(folder: Path, models_dir: Path, name: str, version: str) -> Path:
    """Move an extracted archive to ``models/<name>/<version>``; returns the new folder."""
    final = models_dir / name / version
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(final)
    return final
