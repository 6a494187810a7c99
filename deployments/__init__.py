"""Ray Serve wiring of raytorch: ``app`` holds the typed builders named in configs/*.yaml;
``model``, ``pool``, ``management`` and ``inference`` are the parts; ``common`` sits below them."""
