"""momentum-residual ViT (Sander et al. 2021), exactly reversible on a 2^-9 grid, on CIFAR-10
for 400 epochs.

    python train.py --config configs/momentum_cifar10.py --workdir runs/momentum_cifar10

Best test accuracy to expect: no published number (the original left this model unfinished).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('momentum', 'cifar10')
