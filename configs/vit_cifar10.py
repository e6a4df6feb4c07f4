"""ViT-small (SPT, LSA, pre-norm blocks), plain autodiff, on CIFAR-10 for 400 epochs.

    python train.py --config configs/vit_cifar10.py --workdir runs/vit_cifar10

Best test accuracy to expect: the original project reported 88.26 %, the BDIA paper 88.15 %.
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('vit', 'cifar10')
