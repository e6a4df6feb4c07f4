"""Moved to ``vit_jax.training.config_defaults``; kept for config files that import it."""
from vit_jax.training.config_defaults import apply_overrides, get_config, preset  # noqa: F401
