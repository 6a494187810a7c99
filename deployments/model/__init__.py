"""The model part: one model version as a Serve deployment with ``@serve.batch``, and its builder."""
