"""Workflows: a DAG of model deployments and Python functions, served as one application."""
