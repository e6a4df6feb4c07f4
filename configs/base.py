"""The shared base of every config in this folder (defined in vit_jax/presets.py).

Add new config fields in vit_jax/presets.py so that every tool sees them.
"""
from vit_jax.presets import get_config, preset  # noqa: F401
