"""momentum-residual ViT (Sander et al. 2021), exactly reversible on a 2^-9 grid, on MNIST for
50 epochs.

    python train.py --config configs/momentum_mnist.py --workdir runs/momentum_mnist

Best test accuracy to expect: none published (the compared numbers are for CIFAR-10).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('momentum', 'mnist')
