"""Which Python code a registered model may run: its handler and its model factory.

Registering is running code: the handler and the factory a registration names are imported and
called in the model replicas (and a custom handler in the management process, to check it).
The token holder may therefore name only:

- a default handler (``image_classifier``, ... or its full import path);
- code inside the archive itself (``file.py:Class``: a relative path, checked to stay inside
  the archive; or a TorchServe archive's own handler file, ``torchserve:file.py[:function]``),
  unless the server sets ``allow_archive_code: false``;
- a public callable of a module the server's config trusts (``ManagementArgs.trusted_modules``,
  default ``handlers.zoo``), named directly (``module:name``, no attribute chain such as
  ``module:os.system``).

Anything else, such as ``handler=/some/dir/evil.py:H`` or ``factory: os:system``, is refused
with a 400 that names the setting to change. No Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence

from handlers.errors import ConfigError
from handlers.handler_catalog import DEFAULT_HANDLERS
from handlers.spec import ModelSpec
from handlers.torchserve.names import (
    TORCHSERVE_PREFIX,
    default_handler_class,
    mar_model_file,
    parse_torchserve_ref,
)
from handlers.unpacking import leaves_archive


def is_trusted_module(module: str, trusted_modules: Sequence[str]) -> bool:
    """True when ``module`` is one of ``trusted_modules`` or inside one of them."""
    return any(module == trusted or module.startswith(trusted + ".") for trusted in trusted_modules)


def _check_archive_file(what: str, ref: str, file: str, allow_archive_code: bool) -> None:
    if not allow_archive_code:
        raise ConfigError(
            f"{what} {ref!r} is Python code from the archive, and this server does not run "
            "archive code (management args allow_archive_code: false)"
        )
    if leaves_archive(file):
        raise ConfigError(f"{what} {ref!r} points outside the archive: name a .py file inside it")


def _check_import(what: str, ref: str, trusted_modules: Sequence[str], allow_archive_code: bool) -> None:
    module, _, attribute = ref.rpartition(":")
    if module.endswith(".py"):
        _check_archive_file(what, ref, module, allow_archive_code)
        return
    if (
        is_trusted_module(module, trusted_modules)
        and attribute.isidentifier()
        and not attribute.startswith("_")
    ):
        return
    trusted = ", ".join(trusted_modules) or "none"
    raise ConfigError(
        f"{what} {ref!r} is not allowed for a registered model: use a default handler, a .py file "
        f"inside the archive ('file.py:Name'), or a public name of a module the server trusts "
        f"(management args trusted_modules; now: {trusted})"
    )


def check_registered_code(
    spec: ModelSpec, trusted_modules: Sequence[str], allow_archive_code: bool = True
) -> None:
    """Raise ConfigError (400) unless the spec's handler and factory are allowed (see above)."""
    if spec.handler.startswith(TORCHSERVE_PREFIX):  # a TorchServe handler file of the archive
        file = parse_torchserve_ref(spec.handler)[0]
        if default_handler_class(file) is None:
            _check_archive_file("handler", spec.handler, file, allow_archive_code)
        elif model_file := mar_model_file(spec.base_dir):  # TorchServe's handler runs model.py
            _check_archive_file("model file", model_file, model_file, allow_archive_code)
    elif spec.handler not in DEFAULT_HANDLERS and spec.handler not in DEFAULT_HANDLERS.values():
        if ":" not in spec.handler:
            known = ", ".join(sorted(DEFAULT_HANDLERS))
            raise ConfigError(f"Unknown handler {spec.handler!r}: use one of {known}, or 'file.py:Class'")
        _check_import("handler", spec.handler, trusted_modules, allow_archive_code)
    if spec.source is not None and spec.source.factory:  # no source: a handler file loads it
        _check_import("source.factory", spec.source.factory, trusted_modules, allow_archive_code)
