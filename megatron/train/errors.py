"""The error a run stops with before any work when its settings cannot work."""


class ConfigError(ValueError):
    """Flags (or a DeepSpeed config) that cannot work together, with what to change."""
