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

from handlers.torchserve.names import TS_API_MODULES, TS_API_PACKAGES, uses_real_ts

MARKER = "__raytorch_ts_api__"


def install() -> str:
    """Make ``import ts.<module>`` work here: ``"torchserve"`` when TorchServe's own package is
    to be used (see :func:`handlers.torchserve.names.uses_real_ts`), else ``"raytorch"``, ours
    then standing in for the modules it provides (also over a ``ts`` imported earlier)."""
    if uses_real_ts():
        if getattr(sys.modules.get("ts"), MARKER, False):  # ours stood in earlier: step aside
            for name in [n for n in sys.modules if n == "ts" or n.startswith("ts.")]:
                del sys.modules[name]
        return "torchserve"
    for package in TS_API_PACKAGES:
        if not getattr(sys.modules.get(package), MARKER, False):
            module = types.ModuleType(package, "TorchServe's handler API, as provided by raytorch.")
            module.__path__ = []  # a package: its submodules are the entries below
            setattr(module, MARKER, True)
            sys.modules[package] = module
    for name, target in TS_API_MODULES.items():
        sys.modules[name] = importlib.import_module(target)
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, sys.modules[name])
    return "raytorch"
