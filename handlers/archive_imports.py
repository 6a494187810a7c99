"""Import a model archive's Python files so that every archive gets modules of its own.

Many archives run in one process (a pool replica holds many models; the management process
checks every registration) and archives name their files alike: each TorchServe archive has its
``model.py``, and its handler does ``from model import Net``. Putting every archive's folder on
``sys.path``, as TorchServe's worker does for its one model, would let the first archive that
imported ``model`` answer for all of them; keying modules by file path would keep running an
archive's old code after another archive is registered at the same path.

So an archive's modules live in a package of their own, named after the archive's folder and
the bytes of every Python file in it (``raytorch_archive_<hash>.model``): changed code is a new
package, the same code at the same place is imported once, and two archives never share a
module. Import statements in those modules find the archive's own top-level names (its ``.py``
files and folders, except names of the standard library) inside the archive, at load time and
later: each module's builtins carry an ``__import__`` that knows its archive; other names
(torch, installed packages) import as usual. While a handler loads, :meth:`ArchiveModules.
plain_names` also lets code outside the archive import them by their plain names (TorchServe's
own BaseHandler calls ``importlib.import_module("model")``). Importing this module adds one
finder to ``sys.meta_path``; it answers only for archive packages and, inside
:meth:`ArchiveModules.plain_names`, for that archive's names.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PACKAGE_PREFIX = "raytorch_archive_"
_real_import = builtins.__import__
# sys.modules is process-wide: one archive's plain names at a time.
_LOCK = threading.RLock()
_ARCHIVES: dict[str, ArchiveModules] = {}
_active: ArchiveModules | None = None


def _python_files(folder: Path) -> list[Path]:
    """The archive's .py files, in a stable order (hidden folders and caches skipped)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        found += [Path(root, f) for f in sorted(files) if f.endswith(".py")]
    return found


def archive_key(folder: Path) -> str:
    """A hash of the folder's path and of every Python file in it (names and bytes)."""
    digest = hashlib.sha256(str(folder).encode())
    for path in _python_files(folder):
        digest.update(b"\0" + str(path.relative_to(folder)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:20]


def archive_modules(folder: str | Path) -> ArchiveModules:
    """The modules of the archive in ``folder`` as its files are now (read at every call)."""
    folder = Path(folder).resolve()
    key = archive_key(folder)
    with _LOCK:
        if key not in _ARCHIVES:
            _ARCHIVES[key] = ArchiveModules(folder, key)
        return _ARCHIVES[key]


def _own_names(folder: Path) -> frozenset[str]:
    names = set()
    for entry in folder.iterdir():
        name = entry.stem if entry.suffix == ".py" and entry.is_file() else entry.name
        if entry.is_dir() and not any(entry.glob("*.py")):
            continue  # data, not code
        if name.isidentifier() and name not in sys.stdlib_module_names:
            names.add(name)
    return frozenset(names)


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Runs an archive file with its archive's ``__import__``; always compiles the source (a
    byte-code cache of an earlier archive at the same path must never be run)."""

    def __init__(self, fullname: str, path: str, archive: ArchiveModules) -> None:
        super().__init__(fullname, path)
        self.archive = archive

    def get_code(self, fullname: str) -> types.CodeType:
        return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__builtins__ = self.archive.builtins  # type: ignore[attr-defined]
        super().exec_module(module)


class _FolderLoader(importlib.abc.Loader):
    """A folder without ``__init__.py`` (or the archive itself): a package with no code."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class _AliasLoader(importlib.abc.Loader):
    """Gives a plain name (``model``) the archive's module itself, not a second copy."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module, self.spec = module, module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec on it


class ArchiveModules:
    """The modules of one archive (one folder with given contents)."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.package = PACKAGE_PREFIX + key
        self.names = _own_names(folder)
        self.builtins = {**builtins.__dict__, "__import__": self._import}

    def load_file(self, path: str | Path) -> types.ModuleType:
        """The module of one of the archive's files (imported on first use)."""
        relative = Path(path).resolve().relative_to(self.folder).with_suffix("")
        return importlib.import_module(f"{self.package}.{'.'.join(relative.parts)}")

    def spec_for(self, fullname: str) -> importlib.machinery.ModuleSpec | None:
        """The spec of ``<package>[.dotted.name]`` (None: the archive has no such file)."""
        parts = fullname.split(".")[1:]
        if not parts:
            spec = importlib.machinery.ModuleSpec(fullname, _FolderLoader(), is_package=True)
            spec.submodule_search_locations = [str(self.folder)]
            return spec
        base = self.folder.joinpath(*parts)
        for file, locations in ((base / "__init__.py", [str(base)]), (base.with_suffix(".py"), None)):
            if file.is_file():
                loader = _SourceLoader(fullname, str(file), self)
                return importlib.util.spec_from_file_location(
                    fullname, file, loader=loader, submodule_search_locations=locations
                )
        if base.is_dir():
            spec = importlib.machinery.ModuleSpec(fullname, _FolderLoader(), is_package=True)
            spec.submodule_search_locations = [str(base)]
            return spec
        return None

    def _import(
        self,
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        top = name.partition(".")[0]
        # Relative imports already name the archive's package (its modules' __package__).
        if level or top not in self.names:
            return _real_import(name, globals, locals, fromlist, level)
        module = _real_import(f"{self.package}.{name}", None, None, fromlist, 0)
        return module if fromlist else sys.modules[f"{self.package}.{top}"]

    @contextlib.contextmanager
    def plain_names(self) -> Iterator[None]:
        """For the block, ``importlib.import_module("model")`` and unpickling find this
        archive's modules by their plain names; what ``sys.modules`` held under those names
        before is put back after."""
        global _active
        with _LOCK:
            previous, _active = _active, self
            saved = {n: m for n, m in sys.modules.items() if n.partition(".")[0] in self.names}
            for name in saved:
                del sys.modules[name]
            try:
                yield
            finally:
                for name in [n for n in sys.modules if n.partition(".")[0] in self.names]:
                    del sys.modules[name]
                sys.modules.update(saved)
                _active = previous


class _ArchiveFinder(importlib.abc.MetaPathFinder):
    """Finds archive packages' modules, and the active archive's plain names."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top.startswith(PACKAGE_PREFIX):
            archive = _ARCHIVES.get(top[len(PACKAGE_PREFIX) :])
            return archive.spec_for(fullname) if archive else None
        active = _active
        if active is None or top not in active.names:
            return None
        try:
            module = importlib.import_module(f"{active.package}.{fullname}")
        except ModuleNotFoundError:
            return None
        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(module), is_package=hasattr(module, "__path__")
        )


if not any(isinstance(f, _ArchiveFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _ArchiveFinder())
