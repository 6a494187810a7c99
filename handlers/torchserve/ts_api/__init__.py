"""raytorch's implementation of the part of TorchServe's ``ts`` package that handler files use.

Written from TorchServe's documented handler API (same classes, methods and attributes), so a
handler file that subclasses ``ts.torch_handler.image_classifier.ImageClassifier`` runs
unchanged when TorchServe itself is not installed. :func:`install` makes ``import ts...``
resolve to these modules in the current process, only when the real package is absent.
"""

from __future__ import annotations

import importlib
import sys
import types

from handlers.torchserve.names import TS_API_MODULES, TS_API_PACKAGES, real_ts_installed

MARKER = "__raytorch_ts_api__"


def install() -> str:
    """Make ``import ts.<module>`` work here; returns ``"torchserve"`` when TorchServe's own
    package is installed (it is then used as it is) or ``"raytorch"`` for ours."""
    if real_ts_installed() and not getattr(sys.modules.get("ts"), MARKER, False):
        return "torchserve"
    for package in TS_API_PACKAGES:
        if package not in sys.modules:
            module = types.ModuleType(package, "TorchServe's handler API, as provided by raytorch.")
            module.__path__ = []  # a package: its submodules are the entries below
            setattr(module, MARKER, True)
            sys.modules[package] = module
    for name, target in TS_API_MODULES.items():
        module = importlib.import_module(target)
        sys.modules.setdefault(name, module)
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, sys.modules[name])
    return "raytorch"
