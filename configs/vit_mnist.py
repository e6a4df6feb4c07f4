"""ViT-small (SPT, LSA, pre-norm blocks), plain autodiff, on MNIST for 50 epochs.

    python train.py --config configs/vit_mnist.py --workdir runs/vit_mnist

Best test accuracy to expect: none published (the compared numbers are for CIFAR-10).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('vit', 'mnist')
