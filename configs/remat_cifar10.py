"""the same ViT with each block recomputed in the backward pass (jax.checkpoint), on CIFAR-10:
the original recipe.

    python train.py --config configs/remat_cifar10.py --workdir runs/remat_cifar10

Recipe: SET-Adam, lr 1e-4, batch 128, cosine decay, 400 epochs, depth 6, dim 512, random
crops and flips (vit_jax/presets.py; README lists every deliberate difference from the
original). Expected best test accuracy: vit's accuracy (the same model and updates; remat
changes only memory and time): the original reported 88.26 % for vit. The full recipe has
not been run here yet: RESULTS.md has the reduced-budget numbers.
"""
from vit_jax.presets import preset


def get_config():
  return preset('remat', 'cifar10')
