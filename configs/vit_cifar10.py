"""ViT-small (SPT, LSA, pre-norm blocks), plain autodiff, on CIFAR-10: the original recipe.

    python train.py --config configs/vit_cifar10.py --workdir runs/vit_cifar10

Recipe: SET-Adam, lr 1e-4, batch 128, cosine decay, 400 epochs, depth 6, dim 512, random
crops and flips (vit_jax/presets.py; README lists every deliberate difference from the
original). Expected best test accuracy: the original project reported 88.26 % (best epoch on
the test set); the BDIA paper 88.15 %. The full recipe has not been run here yet: RESULTS.md
has the reduced-budget numbers.
"""
from vit_jax.presets import preset


def get_config():
  return preset('vit', 'cifar10')
