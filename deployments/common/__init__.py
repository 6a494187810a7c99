"""Pieces shared by the inference, model and management parts: settings, names, auth,
the messages a model replica answers with, and the table of model versions."""
