"""the same ViT, each block recomputed in the backward pass (jax.checkpoint), on MNIST for 50
epochs.

    python train.py --config configs/remat_mnist.py --workdir runs/remat_mnist

Best test accuracy to expect: none published (the compared numbers are for CIFAR-10).
"""
from vit_jax.training.config_defaults import preset


def get_config():  # the original recipe: see config_defaults.preset
  return preset('remat', 'mnist')
