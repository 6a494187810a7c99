"""Model handlers: plain PyTorch + Pillow + pydantic, no Ray.

Import the pieces from their modules: ``handlers.spec.ModelSpec``,
``handlers.handler_catalog.create_handler``, ``handlers.base.BaseHandler``.
"""
