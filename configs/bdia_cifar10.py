"""BDIA ViT (arXiv 2407.09093), exactly reversible on a 2^-9 grid with one side bit, on
CIFAR-10 for 400 epochs.

    python train.py --config configs/bdia_cifar10.py --workdir runs/bdia_cifar10

Best test accuracy to expect: the original project reported 88.99 %, the BDIA paper 89.10 %.
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('bdia', 'cifar10')
