"""Ray Serve wiring of raytorch: ``app`` holds the typed builders named in configs/*.yaml;
``inference``, ``model`` and ``management`` are the three parts; ``common`` sits below them."""
