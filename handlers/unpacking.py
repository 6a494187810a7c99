"""Safe unpacking of model archives, and the rule that paths an archive names stay inside it.

A registered archive comes from whoever holds the management token, so unpacking it must not
write, read or fill anything beyond its own folder:

- zip entries: no absolute paths, ``..``, backslashes or links; no duplicate names, no name
  that is both a file and a folder (``a`` then ``a/b``); at most :data:`MAX_ENTRIES` entries,
  :data:`MAX_EXTRACTED_BYTES` in all, and no entry that expands more than :data:`MAX_RATIO`
  times its compressed size (zip bombs; small entries are exempt);
- directory archives: regular files and folders only (a symbolic link, FIFO or device is
  refused, not followed), with the same count and size limits;
- every path the archive's manifest names (weights, model and handler files, labels, handler
  options) is relative and free of ``..``: :func:`leaves_archive`.

No Ray here.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from handlers.errors import BadInputError

MAX_ENTRIES = 10_000
MAX_EXTRACTED_BYTES = 8 * 1024**3
MAX_RATIO = 100
# Entries that expand to less than this are exempt from the ratio (a JSON label file of a few
# MB may well compress 200:1); a bomb needs far more than this to do harm.
RATIO_EXEMPT_BYTES = 16 * 1024**2
PKG_SCHEME = "pkg://"


def _refuse(message: str) -> BadInputError:
    return BadInputError(f"{message}: refused")


def _entry_parts(name: str) -> tuple[str, ...]:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise _refuse(f"Archive entry {name!r} points outside the archive")
    if not path.parts:
        raise _refuse(f"Archive entry {name!r} has no name")
    return path.parts


class _Tally:
    """Counts entries and bytes against the limits as an archive is checked."""

    def __init__(self) -> None:
        self.entries = 0
        self.size = 0

    def add(self, size: int) -> None:
        self.entries += 1
        self.size += size
        if self.entries > MAX_ENTRIES:
            raise _refuse(f"Archive has more than {MAX_ENTRIES} entries")
        if self.size > MAX_EXTRACTED_BYTES:
            raise _refuse(f"Archive expands to more than {MAX_EXTRACTED_BYTES} bytes")


def checked_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The zip's entries, once every one of them passed the checks of the module docstring."""
    infos = archive.infolist()
    if len(infos) > MAX_ENTRIES:  # before looking at each: the count alone is enough to refuse
        raise _refuse(f"Archive has {len(infos)} entries, more than {MAX_ENTRIES}")
    tally, files, folders = _Tally(), set(), set()
    for info in infos:
        parts = _entry_parts(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise _refuse(f"Archive entry {info.filename!r} is a symbolic link")
        key = "/".join(parts)
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.is_dir():
            folders.add(key)
        elif key in files:
            raise _refuse(f"Archive entry {key!r} appears twice")
        else:
            files.add(key)
        tally.add(info.file_size)
        if info.file_size > RATIO_EXEMPT_BYTES and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise _refuse(
                f"Archive entry {key!r} expands {info.file_size // max(1, info.compress_size)} times "
                f"(to {info.file_size} bytes), more than {MAX_RATIO} times: a zip bomb?"
            )
    clash = sorted(files & folders)
    if clash:
        raise _refuse(f"Archive entry {clash[0]!r} is both a file and a folder")
    return infos


def _directory_entries(source: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under ``source`` (not following links), with its ``lstat``."""
    for folder, dirs, files in os.walk(source, followlinks=False):
        for name in sorted(dirs) + sorted(files):
            path = Path(folder) / name
            yield path, path.lstat()


def copy_directory(source: Path, target: Path) -> None:
    """Copy a directory archive into ``target``: regular files and folders only."""
    tally = _Tally()
    for path, info in _directory_entries(source):
        relative = path.relative_to(source)
        if stat.S_ISLNK(info.st_mode):
            raise _refuse(f"Archive entry {relative.as_posix()!r} is a symbolic link")
        if stat.S_ISDIR(info.st_mode):
            (target / relative).mkdir(parents=True, exist_ok=True)
            continue
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the copy; a device, worse
            raise _refuse(f"Archive entry {relative.as_posix()!r} is not a regular file")
        tally.add(info.st_size)
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / relative, follow_symlinks=False)


def extract(archive_path: Path, target: Path) -> Path:
    """Safely unpack a zip archive (or copy a directory archive) into ``target``."""
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        if archive_path.is_dir():
            copy_directory(archive_path, staging)
        else:
            try:
                with zipfile.ZipFile(archive_path) as archive:
                    for info in checked_members(archive):
                        archive.extract(info, staging)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
                # A damaged entry (bad CRC, a size that lies) or a method zipfile cannot read.
                raise BadInputError(
                    f"{archive_path.name} is not a readable zip archive (.mar or .zip): {exc}"
                ) from None
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def leaves_archive(ref: str) -> bool:
    """True when a path an archive names could point outside the archive: absolute, ``~``,
    ``..`` or a backslash. ``pkg://package/file`` (a file of an installed package) is
    allowed as long as its path stays inside the package."""
    if ref.startswith(PKG_SCHEME):
        ref = ref[len(PKG_SCHEME) :].partition("/")[2] or "."
    path = PurePosixPath(ref)
    return path.is_absolute() or ref.startswith("~") or ".." in path.parts or "\\" in ref or "\0" in ref


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _strings(item, f"{where}[{index}]")


def check_named_paths(model: dict[str, Any]) -> None:
    """Refuse a manifest's ``model`` block that names a file outside its archive.

    Every string of ``source``, ``labels``, ``handler`` (the file part of ``file.py:Class``)
    and the handler's ``options`` is checked: which of them are paths depends on the model
    source and the handler, and a relative, ``..``-free string is harmless either way.
    """
    fields = {key: model.get(key) for key in ("source", "labels", "options")}
    handler = model.get("handler")
    if isinstance(handler, str):
        fields["handler"] = handler.rpartition(":")[0] or handler
    for where, value in _strings(fields, "model"):
        module = value.rpartition(":")[0] if where == "model.source.factory" else value
        if module and leaves_archive(module):
            where = where.removeprefix("model.")
            raise _refuse(f"{where} {value!r} points outside the archive (paths must stay inside it)")
