"""Model names the plugin resolves itself: `builtin:tiny` (the offline tiny Qwen2 of the demo
and CI) and `builtin:tiny-<family>` (tiny models of mainstream families, see
`pytest_llmslo.testing.families`), each built offline on first use and cached."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pytest_llmslo.config import ServerConfig

BUILTIN_PREFIX = "builtin:"
BUILTIN_TINY = "builtin:tiny"
TINY_SERVED_NAME = "tiny-qwen2"


def builtin_models() -> list[str]:
    """Every `builtin:` model id, `builtin:tiny` first."""
    from pytest_llmslo.testing.families import FAMILIES

    return [BUILTIN_TINY, *(f"{BUILTIN_TINY}-{key}" for key in FAMILIES)]


def is_builtin(model: str) -> bool:
    return model.startswith(BUILTIN_PREFIX)


def builtin_model_path(model: str) -> Path:
    """The directory of built-in ``model``, built on first use; ValueError names the known ids."""
    if model not in builtin_models():
        raise ValueError(f"unknown built-in model {model!r}; known: {', '.join(builtin_models())}")
    if model == BUILTIN_TINY:
        from pytest_llmslo.testing.tiny_model import build_tiny_model

        return build_tiny_model()
    from pytest_llmslo.testing.family_model import build_family_model

    return build_family_model(model[len(BUILTIN_TINY) + 1 :])


def resolve_model(config: ServerConfig) -> ServerConfig:
    """Builds (once, cached on disk) and points at a built-in model; other configs pass through."""
    model = config.model
    if not is_builtin(model):
        return config
    try:
        path = builtin_model_path(model)
    except ValueError as exc:
        raise ValueError(f"server {config.name!r}: {exc}") from None
    short_name = TINY_SERVED_NAME if model == BUILTIN_TINY else model.removeprefix(BUILTIN_PREFIX)
    # transformers serve answers only to the model path it was given; vLLM can take a short name
    served = config.served_model_name or (short_name if config.backend == "vllm" else None)
    return replace(config, model=str(path), served_model_name=served)
