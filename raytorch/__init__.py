"""raytorch: TorchServe-compatible serving of PyTorch models on Ray Serve.

The server lives in ``handlers`` (model logic) and ``deployments`` (Ray Serve wiring); this
package holds the client command line, ``raytorch``.
"""

__version__ = "0.1.0"
