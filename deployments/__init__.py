"""Ray Serve wiring of raytorch: ``app`` holds the typed builders named in configs/*.yaml;
``model``, ``pool``, ``management`` and ``inference`` are the parts; ``common`` sits below them."""

from deployments.common.serve_loopback import keep_replica_servers_on_loopback

# A replica process imports this package when it loads its deployment, before Serve starts the
# replica's own gRPC server: the moment to keep that server on loopback (a no-op elsewhere).
keep_replica_servers_on_loopback()
