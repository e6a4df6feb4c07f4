"""momentum-residual ViT (exactly reversible) on mnist: the original recipe (setadam, lr 1e-4, batch 128, cosine)."""
from vit_jax.presets import preset


def get_config():
  return preset('momentum', 'mnist')
