"""Typed ``args:`` of the management application (``deployments.app:build_management``), the
largest of the ``args`` models; the others are in :mod:`deployments.common.settings`. No Ray
import here.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator

from deployments.common.torchserve_args import TorchServeManagement
from handlers.spec import NAME_PATTERN, StrictModel


class ManagementArgs(StrictModel):
    """``args`` of the management application (``deployments.app:build_management``)."""

    state_dir: str = Field(
        ".raytorch", description="State database, key file, unpacked archives (env RAYTORCH_STATE_DIR wins)."
    )
    model_store: str = Field(
        "model_store", description="Where `url=` archives are looked up (env RAYTORCH_MODEL_STORE wins)."
    )
    allowed_urls: list[str] = Field(
        default_factory=list,
        description=(
            "Regexes of remote archive URLs that may be fetched (http/https), matched in full "
            "against the URL as parsed (scheme://host[:port]/path?query), at every redirect too."
        ),
    )
    allowed_networks: list[str] = Field(
        default_factory=list,
        description=(
            "Networks (CIDR, e.g. 10.0.0.0/8) that downloads may reach although they are not "
            "public: loopback, link-local and private addresses are refused otherwise, whatever "
            "allowed_urls says, so an allowed host cannot redirect the server to internal services."
        ),
    )
    download_timeout_s: float = Field(
        300.0, gt=0, le=3600, description="Deadline of one archive download, redirects included."
    )
    max_download_bytes: int = Field(
        2 * 1024**3, ge=1, description="Largest archive a download may bring (refused above it)."
    )
    trusted_modules: list[str] = Field(
        default_factory=lambda: ["handlers.zoo"],
        description=(
            "Python modules (and their submodules) whose public callables a registered model may "
            "name as `handler: module:Class` or `source.factory: module:function`. Besides these, "
            "a registration may use the default handlers and code inside its own archive."
        ),
    )
    allow_archive_code: bool = Field(
        True,
        description=(
            "Let registered archives bring Python code (a .mar's model.py, 'file.py:Class' "
            "handlers and factories). False: only the default handlers, TorchScript/ONNX/weights "
            "files and trusted_modules, so no Python from a registration runs."
        ),
    )
    install_py_dep_per_model: bool = Field(
        False,
        description=(
            "TorchServe's setting: install a .mar's requirements file (--requirements-file) at "
            "registration into a folder only that model's replicas have on their path, never in "
            "the server's environment. False, as on TorchServe: the file is ignored."
        ),
    )
    py_dep_install_timeout_s: float = Field(
        600.0,
        gt=0,
        le=7200,
        description="How long pip may take to install one archive's requirements (then 504).",
    )
    register_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="How long a synchronous register waits for readiness."
    )
    propagation_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description=(
            "Time for every ingress to see a routing change (> its discovery_interval_s): "
            "set-default returns after it, and unregister waits it before deleting the app."
        ),
    )
    default_num_cpus: float = Field(
        0.0,
        ge=0,
        description=(
            "CPUs Ray reserves per replica of a registered model unless `num_cpus=` is given. "
            "0 (the default): registered models share the node's cores the way TorchServe's "
            "workers do; each replica's torch threads follow how many replicas are busy. GPUs "
            "(`num_gpus=`) are always reserved exactly."
        ),
    )
    default_pool: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description=(
            "Pool that registrations without `pool=` go to (`dedicated=true` still gives a model "
            "its own application); None: models get their own application unless `pool=` says otherwise."
        ),
    )
    torchserve: TorchServeManagement | None = Field(
        None,
        description=(
            "Set by `raytorch torchserve`: TorchServe's key file, enable_model_api, load_models and "
            "registration defaults (deployments/common/torchserve_args.py). None: our own behaviour."
        ),
    )
    wait_for_resources: bool = Field(
        False,
        description=(
            "Deploy even when the cluster lacks the CPUs/GPUs right now (autoscaling clusters); "
            "by default such a registration is refused at once with what is missing."
        ),
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"{network!r} is not a network (use CIDR, e.g. 10.0.0.0/8): {exc}") from None
        return value

    @field_validator("allowed_urls")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return value

    @field_validator("trusted_modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", module):
                raise ValueError(f"{module!r} is not a dotted module name")
        return value
