"""vit-jax: memory-efficient, exactly reversible Vision Transformers in JAX/Flax.

Three wings, one folder each:

  models/    the model: each variant a forward map and its inverse, one reversible engine
  training/  the trainer: ``train_and_evaluate(config, workdir)`` and what it is made of
  tools/     the commands: verify, bench, compare, report (``python -m vit_jax.tools.X``)

``bench``, ``compare``, ``report``, ``verify`` and ``presets`` beside the folders only
keep earlier command lines (``python -m vit_jax.bench``) and config files working.
"""
