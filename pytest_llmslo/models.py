"""Model names the plugin resolves itself: `builtin:tiny`, the offline tiny model (demo, CI)."""

from __future__ import annotations

from dataclasses import replace

from pytest_llmslo.config import ServerConfig

BUILTIN_TINY = "builtin:tiny"
TINY_SERVED_NAME = "tiny-qwen2"


def resolve_model(config: ServerConfig) -> ServerConfig:
    """Builds (once, cached on disk) and points at a built-in model; other configs pass through."""
    if config.model != BUILTIN_TINY:
        return config
    from pytest_llmslo.testing.tiny_model import build_tiny_model

    path = build_tiny_model()
    # transformers serve answers only to the model path it was given; vLLM can take a short name
    served = config.served_model_name or (TINY_SERVED_NAME if config.backend == "vllm" else None)
    return replace(config, model=str(path), served_model_name=served)
