"""the same ViT, each block recomputed in the backward pass (jax.checkpoint), on CIFAR-10 for
400 epochs.

    python train.py --config configs/remat_cifar10.py --workdir runs/remat_cifar10

Best test accuracy to expect: vit's (the same model and updates; remat changes only memory
and time).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('remat', 'cifar10')
