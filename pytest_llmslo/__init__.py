"""pytest-llmslo: start an LLM inference server, drive load, and gate on service-level objectives."""

__version__ = "0.1.0"
