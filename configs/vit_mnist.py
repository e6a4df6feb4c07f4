"""ViT-small (SPT, LSA, pre-norm blocks), plain autodiff, on MNIST: the original recipe.

    python train.py --config configs/vit_mnist.py --workdir runs/vit_mnist

Recipe: SET-Adam, lr 1e-4, batch 128, cosine decay, 50 epochs, depth 4, MLP 256, flips and
no crop (vit_jax/presets.py; README lists every deliberate difference from the original).
Expected best test accuracy: none recorded (the numbers this project compares against are
for CIFAR-10). The full recipe has not been run here yet: RESULTS.md has the reduced-budget
numbers.
"""
from vit_jax.presets import preset


def get_config():
  return preset('vit', 'mnist')
