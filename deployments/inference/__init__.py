"""The inference part: the HTTP entry point, TorchServe's and KServe's protocols, routing to
model deployments, metrics and the access log."""
