"""Model handlers: plain PyTorch + Pillow + pydantic, no Ray.

Import the pieces from their modules: ``handlers.spec.ModelSpec``,
``handlers.registry.create_handler``, ``handlers.base.BaseHandler``.
"""
