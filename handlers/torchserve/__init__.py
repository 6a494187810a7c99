"""TorchServe handler files, served as they are.

A TorchServe archive's handler is a Python file whose class subclasses one of TorchServe's
handlers (``from ts.torch_handler.image_classifier import ImageClassifier``) or that defines a
``handle(data, context)`` function. :mod:`handlers.torchserve.adapter` runs such a file inside
a raytorch model replica: it loads it the way TorchServe's worker does and answers batches
through its ``preprocess``/``inference``/``postprocess`` (or its ``handle``).

The handler file imports ``ts``: TorchServe's own package when it is installed
(``pip install torchserve``), otherwise :mod:`handlers.torchserve.ts_api`, raytorch's
implementation of the part of that API handler files use. :mod:`handlers.torchserve.names`
maps TorchServe's names of its default handlers onto raytorch's own handlers.
"""
