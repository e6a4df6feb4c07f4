"""two-stream reversible ViT (Mangalam et al. 2022), activations rebuilt in the backward pass,
on CIFAR-10: the original recipe.

    python train.py --config configs/revvit_cifar10.py --workdir runs/revvit_cifar10

Recipe: SET-Adam, lr 1e-4, batch 128, cosine decay, 400 epochs, depth 6, dim 512, random
crops and flips (vit_jax/presets.py; README lists every deliberate difference from the
original). Expected best test accuracy: the BDIA paper reported 86.22 % for RevViT (the
original project's 86.99 % was a per-block recomputation, not this model). The full recipe
has not been run here yet: RESULTS.md has the reduced-budget numbers.
"""
from vit_jax.presets import preset


def get_config():
  return preset('revvit', 'cifar10')
