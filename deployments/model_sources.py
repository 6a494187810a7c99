"""From a register request (``POST /models?url=...``) to the args of a model application.

Resolves ``url`` inside the model store (refusing path traversal), fetches allow-listed
remote archives, unpacks the archive and applies the request's overrides. No Ray here.
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.settings import ModelAppArgs
from handlers.archive import ArchiveModel, extract, read_extracted
from handlers.errors import BadInputError, ModelNotFoundError
from handlers.registry import DEFAULT_HANDLERS, handler_class
from handlers.spec import NAME_PATTERN, ModelSpec

DOWNLOAD_TIMEOUT_S = 60
MAX_DOWNLOAD_BYTES = 4 * 1024**3


class DownloadArchiveError(BadInputError):
    """A remote archive could not be fetched."""

    type_name = "DownloadArchiveException"


class RegisterParams(BaseModel):
    """TorchServe's register query parameters (unknown ones are ignored, as TorchServe does)."""

    model_config = ConfigDict(extra="ignore")

    url: str = Field(..., min_length=1, max_length=2048)
    model_name: str | None = Field(None, pattern=NAME_PATTERN)
    handler: str | None = Field(None, max_length=512)
    batch_size: int | None = Field(None, ge=1, le=512)
    max_batch_delay: int | None = Field(None, ge=0, le=60_000, description="Milliseconds.")
    initial_workers: int | None = Field(None, ge=0, le=1024)
    synchronous: bool = True
    response_timeout: int | None = Field(None, ge=1, le=3600, description="Seconds.")
    num_cpus: float | None = Field(None, ge=0, le=1024, description="raytorch extension: CPUs per replica.")
    num_gpus: float | None = Field(None, ge=0, le=64, description="raytorch extension: GPUs per replica.")


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


def settle(folder: Path, models_dir: Path, name: str, version: str, model: dict[str, Any]) -> Path:
    """Move an extracted archive to ``models/<name>/<version>`` and point the spec at it."""
    final = models_dir / name / version
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    folder.rename(final)
    model["base_dir"] = str(final)
    return final


def app_args(found: ArchiveModel, params: RegisterParams, default_num_cpus: float = 0.5) -> ModelAppArgs:
    """Combine what the archive says with the request's overrides; 400 naming bad fields."""
    model = dict(found.model)
    if params.model_name:
        model["name"] = params.model_name
    if params.handler:
        model["handler"] = params.handler
    batching = dict(found.batching)
    if params.batch_size is not None:
        batching["max_batch_size"] = params.batch_size
    if params.max_batch_delay is not None:
        batching["batch_wait_timeout_s"] = params.max_batch_delay / 1000
    resources = {"num_cpus": default_num_cpus, **found.resources}
    if params.initial_workers is not None:
        resources["num_replicas"] = params.initial_workers
    if params.num_cpus is not None:
        resources["num_cpus"] = params.num_cpus
    if params.num_gpus is not None:
        resources["num_gpus"] = params.num_gpus
    try:
        args = ModelAppArgs.model_validate({"model": model, "batching": batching, "resources": resources})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BadInputError(f"Invalid model settings: {problems}") from None
    check_handler(args.model)
    return args


def missing_resources(
    args: ModelAppArgs,
    available: dict[str, float],
    replicas: int | None = None,
    gpus_per_replica: float | None = None,
) -> str | None:
    """What the cluster lacks right now to start ``replicas`` (default: all) replicas, or None.

    ``gpus_per_replica`` is what will really be asked of Ray (after the CPU fallback).
    """
    r = args.resources
    count = r.num_replicas if replicas is None else replicas
    gpus = r.num_gpus if gpus_per_replica is None else gpus_per_replica
    need = {"CPU": r.num_cpus * count, "GPU": gpus * count}
    short = {k: (v, available.get(k, 0.0)) for k, v in need.items() if v > available.get(k, 0.0) + 1e-9}
    if not short:
        return None
    parts = ", ".join(f"{k} {want:g} needed, {have:g} free" for k, (want, have) in short.items())
    return (
        f"Not enough resources in the Ray cluster for {count} more replica(s) of "
        f"{args.model.name}: {parts}. Lower num_cpus/num_gpus or initial_workers, "
        "free capacity, or add nodes."
    )


def check_handler(spec: ModelSpec) -> None:
    """Import a custom handler now, so a missing dependency fails the registration, not
    requests. The default handlers ship with raytorch: they are not imported here, which
    keeps torch out of the management process (its start and memory) until a custom one comes."""
    if spec.handler not in DEFAULT_HANDLERS:
        handler_class(spec.handler, spec.base_dir)
