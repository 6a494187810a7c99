"""Where a registered archive comes from, and where its files end up.

``url`` names an archive inside the model store (path traversal refused) or an allow-listed
remote URL, which :mod:`deployments.management.downloads` fetches into the server's own
downloads folder (never into the model store, whose files are the operator's). Archives are
unpacked into a scratch folder and moved to ``<state>/models/<name>/<version>`` once the
registration is accepted. No Ray here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from handlers.archive import ArchiveModel, extract, read_extracted
from handlers.errors import BadInputError, ModelNotFoundError

REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_remote(url: str) -> bool:
    """True for ``scheme://...`` URLs (downloaded), False for names in the model store."""
    return bool(REMOTE.match(url))


def local_archive(url: str, model_store: Path) -> Path:
    """The archive file or folder ``url`` names inside the model store."""
    store = model_store.resolve()
    candidate = (store / url).resolve()
    if Path(url).is_absolute() or not candidate.is_relative_to(store) or candidate == store:
        raise BadInputError(f"Invalid url {url!r}: it must name an archive inside the model store")
    if not candidate.exists():
        raise ModelNotFoundError(f"Model not found at: {url}")
    return candidate


def unpack(archive: Path, models_dir: Path, hint: str) -> tuple[ArchiveModel, Path]:
    """Extract into a scratch folder and read it; the caller moves it to its final place."""
    scratch = models_dir / ".incoming" / hint
    try:
        folder = extract(archive, scratch)
        return read_extracted(folder), folder
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def clear_scratch(models_dir: Path, downloads_dir: Path) -> list[Path]:
    """Remove what registrations that never finished (the management replica was killed in
    the middle) left behind: unpacked scratch folders and partial downloads. Called when the
    management part starts, before it accepts a registration; returns what it removed."""
    leftovers = [*(models_dir / ".incoming").glob("*"), *downloads_dir.glob(".download-*.part")]
    for path in leftovers:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def settle(folder: Path, models_dir: Path, name: str, version: str) -> Path:
    """Move an extracted archive to ``models/<name>/<version>``; returns the new folder.

    The caller holds the reservation of (name, version), so a folder already there is a
    leftover of a registration that never completed (a crash), not another one's files.
    """
    final = models_dir / name / version
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(final)
    return final
