"""The inference appliance: API server, settings, store and model registry."""

__version__ = "0.1.0"
