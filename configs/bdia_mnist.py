"""BDIA ViT (arXiv 2407.09093), exactly reversible on a 2^-9 grid with one side bit, on MNIST
for 50 epochs.

    python train.py --config configs/bdia_mnist.py --workdir runs/bdia_mnist

Best test accuracy to expect: none published (the compared numbers are for CIFAR-10).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('bdia', 'mnist')
