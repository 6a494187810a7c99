"""A registration's steps before anything is deployed: find (or download, off the event loop)
its archive, unpack it, turn it and the request into model app args (the code policy
included), claim its (name, version), check that the cluster can start it, and move its files
to ``models/<name>/<version>``.

The claim keeps racing registrations apart: (name, version) is reserved right after the
conflict check, with no await between them, before any file moves, and held until the
version is in the state store (two racing registrations once mixed their files). Registrations into
a model pool (deployments.management.pools) take the same steps, except the resource check: the
same parsing, code policy and claims, so a version is either pooled or dedicated, never both.
No Ray here.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from deployments.common.management_args import ManagementArgs
from deployments.common.model_table import ModelTable
from deployments.common.naming import registered_app_name
from deployments.common.settings import ModelAppArgs
from deployments.management.archive_sources import clear_scratch, is_remote, local_archive, settle, unpack
from deployments.management.capacity import ResourceCheck
from deployments.management.downloads import DownloadPolicy, download
from deployments.management.py_deps import install_requirements
from deployments.management.register_params import RegisterParams, app_args, our_defaults
from deployments.management.serve_control import Serve
from deployments.management.state_records import VersionRecord
from deployments.management.state_store import StateStore
from handlers.archive import ArchiveModel
from handlers.errors import ConflictError, ModelNotFoundError

logger = logging.getLogger("ray.serve")


class Intake:
    """Accepts registrations for the manager (see the module docstring)."""

    def __init__(
        self,
        settings: ManagementArgs,
        model_store: Path,
        models_dir: Path,
        downloads_dir: Path,
        store: StateStore,
        serve: Serve,
    ) -> None:
        self.settings, self.store, self.serve = settings, store, serve
        self.model_store, self.models_dir, self.downloads_dir = model_store, models_dir, downloads_dir
        self.download_policy = DownloadPolicy.create(
            settings.allowed_urls, settings.allowed_networks, settings.download_timeout_s,
            settings.max_download_bytes,
        )  # fmt: skip
        self.resources = ResourceCheck(serve, settings.wait_for_resources)
        # (name, version) of registrations past their conflict check that are not in the
        # store yet: a second registration of the same version is refused before it can
        # move any file.
        self._reserved: set[tuple[str, str]] = set()
        left = clear_scratch(models_dir, downloads_dir)
        if left:
            logger.warning(
                "Removed what %d unfinished registrations left behind: %s",
                len(left),
                ", ".join(map(str, left)),
            )

    async def accept(self, params: RegisterParams) -> tuple[ModelAppArgs, VersionRecord]:
        """The args and store record of a registration whose files are in place; its
        (name, version) stays claimed until :meth:`release`."""
        found, args = await self.prepare(params, self.resources.check)
        name, version = args.model.name, args.model.version
        entry = VersionRecord(
            version=version,
            app_name=registered_app_name(name, version),
            args=args.model_dump(mode="json"),
            min_workers=args.resources.num_replicas,
            max_workers=args.resources.max_replicas or args.resources.num_replicas,
            **record_fields(found, params),
        )
        return args, entry

    async def prepare(
        self,
        params: RegisterParams,
        check: Callable[[ModelAppArgs], Awaitable[None]] | None = None,
        table: Callable[[], Awaitable[ModelTable]] | None = None,
    ) -> tuple[ArchiveModel, ModelAppArgs]:
        """Unpack the archive, turn it and the request into args (the code policy included),
        claim (name, version), run ``check(args)`` and move the files to
        ``models/<name>/<version>`` (the args' base_dir). The claim holds until :meth:`release`;
        nothing is left behind on failure. ``table()``: Serve's versions for the conflict check
        (default: a fresh snapshot)."""
        if not params.url:  # `url=` names no archive: TorchServe answers 404 too
            raise ModelNotFoundError('Model not found at: ""')
        found, folder = await self._unpack(params.url)
        reserved, final = None, None
        try:
            args = app_args(
                found, params, self.settings.default_num_cpus, self.settings.trusted_modules,
                self.settings.allow_archive_code,
                self.settings.torchserve.job_queue_size if self.settings.torchserve else None,
                self.settings.install_py_dep_per_model,
            )  # fmt: skip
            name, version = args.model.name, args.model.version
            current = await table() if table is not None else (await self.serve.snapshot()).table
            reserved = self._reserve(current, name, version)
            if check is not None:
                await check(args)
            final = settle(folder, self.models_dir, name, version)
            args = args.model_copy(update={"model": args.model.model_copy(update={"base_dir": str(final)})})
            if args.resources.pip_packages and found.requirements is not None:
                requirements = final / found.requirements.resolve().relative_to(folder.resolve())
                args = await self._install_requirements(args, requirements)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            if final is not None:  # moved, then its requirements failed to install
                shutil.rmtree(final, ignore_errors=True)
            if reserved:
                self._reserved.discard(reserved)
            raise
        return found, args

    async def _install_requirements(self, args: ModelAppArgs, requirements: Path) -> ModelAppArgs:
        """pip-install the archive's requirements (once per content, off the event loop) and
        point the args at the folder; 400/504 naming them when pip fails or hangs."""
        deps = await asyncio.to_thread(
            install_requirements,
            requirements,
            args.resources.pip_packages,
            self.models_dir.parent / "py_deps",
            self.settings.py_dep_install_timeout_s,
        )
        resources = args.resources.model_copy(update={"py_deps_dir": str(deps)})
        return args.model_copy(update={"resources": resources})

    def release(self, name: str, version: str) -> None:
        """Drop the claim of an accepted registration (once it is in the store, or failed)."""
        self._reserved.discard((name, version))

    async def _unpack(self, url: str) -> tuple[ArchiveModel, Path]:
        """Find (or download) the archive and unpack it into a scratch folder."""
        if not is_remote(url):
            archive = local_archive(url, self.model_store)
            return await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        archive = await asyncio.to_thread(download, url, self.downloads_dir, self.download_policy)
        try:
            return await asyncio.to_thread(unpack, archive, self.models_dir, f"{time.time_ns()}")
        finally:
            archive.unlink(missing_ok=True)  # what counts is the unpacked copy

    def _reserve(self, table: ModelTable, name: str, version: str) -> tuple[str, str]:
        """Claim (name, version), or 409 when it exists (registered, dedicated or pooled, or in
        the config) or is claimed. Synchronous: no other registration runs between the check and
        the claim."""
        key = (name, version)
        taken = version in table.versions.get(name, {}) or version in self.store.versions(name)
        if taken or key in self._reserved:
            raise ConflictError(f"Model version {version} is already registered for model {name}")
        self._reserved.add(key)
        return key


def record_fields(found: ArchiveModel, params: RegisterParams) -> dict[str, Any]:
    """What a registration's record keeps of the request and the archive, dedicated or pooled:
    where it came from, its timeouts, runtime, and the settings raytorch's defaults decided."""
    return {
        "url": params.url,
        "response_timeout_s": params.response_timeout or found.response_timeout_s,
        "startup_timeout_s": params.startup_timeout,
        "runtime": params.runtime or found.runtime,
        "defaults": our_defaults(found, params),
    }
