"""shellgate's configuration: the TOML models and their loader."""

from config.durations import format_duration, parse_duration
from config.loader import ConfigError, load_config, parse_config
from config.models import GatewayConfig, Policy, Target, User

__all__ = [
    "ConfigError",
    "GatewayConfig",
    "Policy",
    "Target",
    "User",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
]
