"""Files the server keeps across restarts (the key file; the state database is kept aside the
same way): written atomically.

A crash while writing leaves either the old or the new file, never half of one; a file that
cannot be used anyway is moved aside, never deleted, so nothing is lost by starting without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` through a temporary file, ``fsync`` and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def aside_path(path: Path) -> Path:
    """Where an unusable state file is kept: ``<name>.bad-<UTC time>``, a name not taken yet."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = path.with_name(f"{path.name}.bad-{stamp}")
    suffix = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.bad-{stamp}-{suffix}")
        suffix += 1
    return aside


def move_aside(path: Path, copy: bool = False) -> Path:
    """Keep an unusable state file as :func:`aside_path` (``copy``: leave it in place too)."""
    aside = aside_path(path)
    if copy:
        shutil.copy2(path, aside)
    else:
        os.replace(path, aside)
    return aside
