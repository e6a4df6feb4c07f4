"""momentum-residual ViT (Sander et al. 2021), exactly reversible on a 2^-9 grid, on CIFAR-10:
the original recipe.

    python train.py --config configs/momentum_cifar10.py --workdir runs/momentum_cifar10

Recipe: SET-Adam, lr 1e-4, batch 128, cosine decay, 400 epochs, depth 6, dim 512, random
crops and flips (vit_jax/presets.py; README lists every deliberate difference from the
original). Expected best test accuracy: no published number for this model (the original
left it unfinished). The full recipe has not been run here yet: RESULTS.md has the reduced-
budget numbers.
"""
from vit_jax.presets import preset


def get_config():
  return preset('momentum', 'cifar10')
