"""Configuration: gateway.yaml -> strict YAML -> JSON Schema -> typed model -> semantic checks.

Public entry points: :func:`load` (raises :class:`gateway.errors.ConfigError` listing every
problem) and :func:`json_schema` (the published schema, generated from the model).
"""

from gateway.config.loader import LoadedConfig, Override, default_config_path, load
from gateway.config.model import GatewayConfig, json_schema

__all__ = [
    "GatewayConfig",
    "LoadedConfig",
    "Override",
    "default_config_path",
    "json_schema",
    "load",
]
