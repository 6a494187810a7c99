"""Ray Serve wiring: the ingress, model deployments and their typed application builders."""
