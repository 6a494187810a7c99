"""The management part: TorchServe's /models API, the state store, archive sources and
the Serve calls that deploy and remove model versions at runtime."""
